"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one torch thread: tiny convolutions are much slower with 2 OpenMP
    threads on a shared 2-core machine, and the tests check behaviour, not speed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


CONFIG_DIR = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "config")


def compose(config_name: str = "train", overrides: list[str] | None = None):
    """The project's Hydra config, composed as the entry point would (no run directory is made)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(CONFIG_DIR, version_base=None):
        return hydra_compose(config_name, overrides=list(overrides or []), return_hydra_config=False)


def task_shape_meta(task: str) -> dict:
    """The ``shape_meta`` a task config declares, as a plain dict."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose("train", [f"task={task}"]).task.shape_meta, resolve=True)


def record_lift_demos(path, episodes: int, seed_start: int = 0, camera_size: int = 84, **kwargs) -> dict:
    """Scripted-expert Lift demos in robomimic's HDF5 layout, recorded the way a robomimic task's data
    preparation records them (``config/robomimic/common.yaml``); returns the recording summary."""
    from functools import partial

    from envs.robomimic.demos import expert_demos, image_env_args
    from fibpolicy.data import record_robomimic_demos

    source = partial(expert_demos, "lift", episodes=episodes, seed_start=seed_start, camera_size=camera_size)
    return record_robomimic_demos(path, source, env_args=partial(image_env_args, "lift", camera_size), progress=False,
                                  **kwargs)
