"""Training a diffusion policy: demonstrations (generated if missing), normaliser, policy, rollouts."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .ema import EMAModel
from .seeding import seed_everything


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
    seed_everything(int(cfg.seed))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if "demos" in cfg.task and cfg.task.demos is not None:
        ensure_pusht_demonstrations(cfg.task.dataset.zarr_path, **OmegaConf.to_container(cfg.task.demos, resolve=True))

    dataset = instantiate(cfg.task.dataset, _convert_="all")
    val_dataset = dataset.get_validation_dataset()
    policy = instantiate(cfg.policy, _convert_="all")
    policy.set_normalizer(dataset.get_normalizer())
    evaluator = instantiate(cfg.task.evaluator, _convert_="all") if cfg.task.get("evaluator") else None
    ema_cfg = OmegaConf.to_container(cfg.training.ema, resolve=True) if cfg.training.get("ema") else None
    # Partial first: runtime objects (and the run config itself) must not go through instantiate.
    make_trainer = instantiate(cfg.training.trainer, _partial_=True, _convert_="all")
    trainer = make_trainer(
        model=policy, train_dataset=dataset, val_dataset=val_dataset, run_dir=run_dir, evaluator=evaluator,
        run_config=cfg, ema=partial(EMAModel, **ema_cfg) if ema_cfg is not None else None,
        seed=int(cfg.seed),
    )
    start = time.time()
    metrics = trainer.fit(resume=bool(cfg.resume))
    metrics["train_seconds"] = time.time() - start
    print(f"[fibpolicy] done in {metrics['train_seconds']:.0f} s: " + ", ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
