"""What every kind of training run does around its own model and data: run directory, trainer, fit."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .ema import EMAModel
from .seeding import seed_everything
from .trainer import Trainer


def start_run(cfg: DictConfig) -> Path:
    """Seed everything, create ``cfg.run_dir`` and write the resolved ``config.yaml`` there."""
    seed_everything(int(cfg.seed))
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    return run_dir


def make_trainer(cfg: DictConfig, **runtime: Any) -> Trainer:
    """``cfg.training.trainer`` with the EMA of ``cfg.training.ema`` and the run's runtime objects."""
    ema_cfg = OmegaConf.to_container(cfg.training.ema, resolve=True) if cfg.training.get("ema") else None
    # Partial first: runtime objects (and the run config itself) must not go through instantiate.
    build = instantiate(cfg.training.trainer, _partial_=True, _convert_="all")
    return build(
        run_dir=Path(cfg.run_dir), run_config=cfg, seed=int(cfg.seed),
        ema=partial(EMAModel, **ema_cfg) if ema_cfg else None, **runtime,
    )


def fit(trainer: Trainer, cfg: DictConfig) -> dict[str, Any]:
    """Train (resuming when ``cfg.resume``), add ``train_seconds`` and print a one-line summary."""
    start = time.time()
    metrics = trainer.fit(resume=bool(cfg.resume))
    metrics["train_seconds"] = time.time() - start
    print(f"[fibpolicy] done in {metrics['train_seconds']:.0f} s: " + ", ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics
