"""The task contract: an env observation and a dataset sample of the same state give the same policy input."""

import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import compose
from envs.pusht.demos import record_episode
from fibpolicy.data import SequenceDataset, write_replay_buffer
from fibpolicy.shape_meta import ShapeMeta, Source

WINDOW = dict(horizon=16, n_obs_steps=2, n_action_steps=8)


@pytest.fixture(scope="module")
def episode_store(tmp_path_factory):
    ep = record_episode(seed=7, max_steps=20)
    path = tmp_path_factory.mktemp("contract") / "one.zarr"
    write_replay_buffer(path, ep.data, [len(ep.data["action"])])
    return path, ep


@pytest.mark.parametrize("task", ["pusht_image", "pusht_lowdim"])
def test_env_observation_and_dataset_sample_agree(episode_store, task):
    path, ep = episode_store
    cfg = compose("train", [f"task={task}", "task.evaluator.n_train=1", "task.evaluator.n_test=1"])
    evaluator = instantiate(cfg.task.evaluator, _convert_="all")
    dataset = SequenceDataset(path, instantiate(cfg.task.shape_meta, _convert_="all"), val_ratio=0.0, load_full_obs=True, **WINDOW)
    env = evaluator.env_fn()
    obs, _ = env.reset(seed=7)
    env_inputs = []
    for t in range(10):
        batch = {k: np.asarray(v)[None] for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[None]
        env_inputs.append(evaluator.policy_obs(batch))
        obs, *_ = env.step(ep.data["action"][t].astype(np.float64))
    # window index w covers rows w - 1 ... (pad_before = 1); take row t of the first full windows
    for t in range(10):
        sample = dataset[t + 1]["obs"]  # starts at row t
        for key, value in env_inputs[t].items():
            np.testing.assert_allclose(sample[key][0].numpy(), value[0], rtol=0, atol=1e-5, err_msg=f"{task} {key} t={t}")


def test_shape_meta_errors_name_the_key():
    with pytest.raises(ValueError, match=r"shape_meta obs 'cam': rgb shape must be \[C, H, W\]"):
        ShapeMeta({"obs": {"cam": {"shape": [96, 96], "type": "rgb"}}, "action": {"shape": [2]}})
    with pytest.raises(ValueError, match=r"shape_meta obs 'x': unknown entries \['sorce'\]"):
        ShapeMeta({"obs": {"x": {"shape": [2], "sorce": "state"}}, "action": {"shape": [2]}})
    with pytest.raises(ValueError, match="is not a store key or a slice"):
        Source.parse("state[0]")
    with pytest.raises(ValueError, match="'agent_pos' norm: mode must be one of"):
        ShapeMeta({"obs": {"agent_pos": {"shape": [2], "norm": "minmax"}}, "action": {"shape": [2]}})
    assert Source.parse("state[18:20]") == Source("state", 18, 20) and str(Source.parse("obs[:18]")) == "obs[:18]"


def test_a_named_dataset_path_without_generation_fails_clearly(tmp_path):
    from fibpolicy.training.run import run_training

    cfg = compose("train", ["training=smoke", "task.prepare=null", f"task.dataset.zarr_path={tmp_path}/missing.zarr",
                            f"run_dir={tmp_path}/run", "encoder=vit_fib_tiny"])
    with pytest.raises(Exception, match=r"missing.zarr does not exist .*prepare step"):  # Hydra wraps the FileNotFoundError
        run_training(cfg)
