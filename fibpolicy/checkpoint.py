"""Checkpoint directories: safetensors weights, the resolved config, trainer state; written atomically.

A checkpoint is a directory::

    model.safetensors      weights of the trained model (what the optimiser updates)
    ema.safetensors        weights of its exponential moving average, when there is one
    config.yaml            the resolved run configuration (enough to rebuild the model)
    trainer_state.pt       optimiser, LR scheduler, EMA bookkeeping, step/epoch/batch, RNG states
    meta.json              step, epoch, score and wall-clock time, readable without torch

It is written under a temporary name and renamed into place, so a run killed mid-write never leaves a
half-written checkpoint; an older checkpoint of the same name is replaced only after the new one is
complete.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model, save_model

from .atomic import atomic_path

MODEL_FILE, EMA_FILE, STATE_FILE, CONFIG_FILE, META_FILE = (
    "model.safetensors", "ema.safetensors", "trainer_state.pt", "config.yaml", "meta.json",
)
# A run directory keeps its checkpoints here; ``latest`` is the one a resumed run continues from.
CHECKPOINTS_DIR, LATEST = "checkpoints", "latest"


def latest_checkpoint(run_dir: str | Path) -> Path:
    """Where a run directory's ``latest`` checkpoint lives (it may not exist yet)."""
    return Path(run_dir) / CHECKPOINTS_DIR / LATEST


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint directory; a run directory stands for its ``checkpoints/latest``."""
    path = Path(checkpoint)
    if latest_checkpoint(path).is_dir():
        path = latest_checkpoint(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory (expected a run or checkpoint directory)")
    return path


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    ema_model: nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    config: DictConfig | dict | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / MODEL_FILE))
        if ema_model is not None:
            save_model(ema_model, str(tmp / EMA_FILE))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        if config is not None:
            cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
            OmegaConf.save(cfg, tmp / CONFIG_FILE, resolve=True)
        (tmp / META_FILE).write_text(json.dumps({"time": time.time(), **(meta or {})}, indent=1))
    return path


def _require(path: Path, name: str) -> Path:
    file = path / name
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {name} (expected a directory written by save_checkpoint)")
    return file


def load_weights(model: nn.Module, checkpoint: str | Path, *, ema: bool = False, strict: bool = True) -> nn.Module:
    """Load ``model.safetensors`` (or ``ema.safetensors``) of a checkpoint into ``model``."""
    file = _require(Path(checkpoint), EMA_FILE if ema else MODEL_FILE)
    missing, unexpected = load_model(model, str(file), strict=False)
    if strict and (missing or unexpected):
        raise ValueError(f"{file} does not match the model: missing keys {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    return model


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The trainer state dict of a checkpoint (optimiser, scheduler, counters, RNG states)."""
    # weights_only=False: the state holds RNG tuples and numpy arrays written by this project.
    return torch.load(_require(Path(checkpoint), STATE_FILE), map_location="cpu", weights_only=False)


def load_config(checkpoint: str | Path) -> DictConfig:
    """The resolved run configuration stored with a checkpoint."""
    return OmegaConf.load(_require(Path(checkpoint), CONFIG_FILE))


def checkpoint_task_kind(checkpoint: str | Path) -> str:
    """The ``task.kind`` (``policy``, ``classification``) recorded in a checkpoint's (or run's) config."""
    cfg = load_config(resolve_checkpoint(checkpoint))
    if "task" not in cfg:
        raise ValueError(f"{checkpoint}: config.yaml has no 'task' entry")
    return str(cfg.task.get("kind", "policy"))


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    """Step, epoch, score and time of a checkpoint."""
    return json.loads(_require(Path(checkpoint), META_FILE).read_text())


class TopKCheckpoints:
    """Keeps the ``k`` best checkpoints by a score (higher is better) in ``directory``.

    Names carry no ``=`` so that they can be passed to Hydra entry points unquoted (``checkpoint=...``).
    """

    def __init__(self, directory: str | Path, k: int = 5, *, name_format: str = "epoch{epoch:04d}-score{score:.3f}") -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.directory, self.k, self.name_format = Path(directory), k, name_format

    def existing(self) -> list[tuple[float, Path]]:
        """(score, path) of the kept checkpoints, best first."""
        found = []
        for p in self.directory.glob("epoch*") if self.directory.exists() else []:
            if p.is_dir() and (p / META_FILE).is_file():
                found.append((float(read_meta(p).get("score", float("-inf"))), p))
        return sorted(found, key=lambda sp: -sp[0])

    def wants(self, score: float) -> bool:
        """Whether a checkpoint with ``score`` would be kept."""
        kept = self.existing()
        return self.k > 0 and (len(kept) < self.k or score > kept[-1][0])

    def save(self, score: float, epoch: int, **checkpoint_kwargs: Any) -> Path | None:
        """Save a checkpoint if it ranks among the best ``k``, dropping the one it displaces."""
        if not self.wants(score):
            return None
        meta = {**checkpoint_kwargs.pop("meta", {}), "score": score, "epoch": epoch}
        path = save_checkpoint(self.directory / self.name_format.format(epoch=epoch, score=score), meta=meta, **checkpoint_kwargs)
        for _, stale in self.existing()[self.k :]:
            shutil.rmtree(stale, ignore_errors=True)
        return path
