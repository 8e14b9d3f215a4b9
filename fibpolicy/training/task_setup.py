"""What every kind of training run does around its own model and data: run directory, trainer, fit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .ema import EMAModel
from .run_dir import run_directory, write_run_config
from .seeding import seed_everything
from .trainer import Trainer


@contextmanager
def start_run(cfg: DictConfig) -> Iterator[Path]:
    """Claim ``cfg.run_dir`` (``fibpolicy.training.run_dir``) and seed everything; the run is built inside."""
    with run_directory(cfg) as run_dir:
        seed_everything(int(cfg.seed))
        yield run_dir


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
    # Written only now: every check has passed and the model, data and trainer were built from it.
    write_run_config(cfg, trainer.run_dir)
    start = time.time()
    metrics = trainer.fit(resume=bool(cfg.resume))
    metrics["train_seconds"] = time.time() - start
    if trainer.dist.is_main:
        print(f"[fibpolicy] done in {metrics['train_seconds']:.0f} s: " + ", ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)) + f"\n[fibpolicy] run directory: {trainer.run_dir}")
    return metrics
