"""Training a diffusion policy: demonstrations (generated if missing), normaliser, policy, rollouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .task_setup import fit, make_trainer, start_run


def ensure_pusht_demonstrations(zarr_path: str | Path, *, episodes: int, seed_start: int = 0, workers: int | None = None) -> Path:
    """Return ``zarr_path``; generate it with the scripted PushT expert first if it does not exist yet."""
    path = Path(zarr_path)
    if path.exists():
        return path
    from envs.pusht.demos import generate_demos  # only needed when the cache is cold

    print(f"[fibpolicy] {path} not found: generating {episodes} PushT expert demonstrations (cached for later runs)")
    summary = generate_demos(path, episodes=episodes, seed_start=seed_start, workers=workers, progress=True)
    print(f"[fibpolicy] demonstrations ready: {json.dumps(summary)}")
    return path


def train_policy(cfg: DictConfig) -> dict[str, Any]:
    """Build everything a policy run needs from the composed config and train it."""
    start_run(cfg)
    if "demos" in cfg.task and cfg.task.demos is not None:
        ensure_pusht_demonstrations(cfg.task.dataset.zarr_path, **OmegaConf.to_container(cfg.task.demos, resolve=True))

    dataset = instantiate(cfg.task.dataset, _convert_="all")
    val_dataset = dataset.get_validation_dataset()
    policy = instantiate(cfg.policy, _convert_="all")
    policy.set_normalizer(dataset.get_normalizer())
    evaluator = instantiate(cfg.task.evaluator, _convert_="all") if cfg.task.get("evaluator") else None
    trainer = make_trainer(cfg, model=policy, train_dataset=dataset, val_dataset=val_dataset, evaluator=evaluator)
    return fit(trainer, cfg)
