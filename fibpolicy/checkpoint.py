"""Checkpoint directories: safetensors weights, the resolved config, trainer state; written atomically.

A checkpoint is a directory::

    model.safetensors      weights of the trained model (what the optimiser updates)
    ema.safetensors        weights of its exponential moving average (absent when equal to the model's)
    config.yaml            the resolved run configuration (enough to rebuild the model)
    trainer_state.pt       optimiser, LR scheduler, EMA bookkeeping, step/epoch/batch, RNG states
    meta.json              step, epoch, score, time, and the size of every file above; written last

It is built under a temporary name, fsynced and renamed into place (``fibpolicy.atomic``), so a kill
never leaves a half-written checkpoint under a real name; ``meta.json`` lists every file with its size,
so a checkpoint truncated afterwards is refused by :func:`validate_checkpoint` with the file named.

A run directory keeps ``checkpoints/state-<step>/`` (the resumable one, with trainer state),
``checkpoints/latest``, a symlink to it replaced by one rename (there is never a moment without a
valid ``latest``), and the top-k ``checkpoints/epochNNNN-score*/``, which hold only the evaluation
weights (EMA when there is one), the config and the meta.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model, save_model

from .atomic import atomic_path, point_link

MODEL_FILE, EMA_FILE, STATE_FILE, CONFIG_FILE, META_FILE = (
    "model.safetensors", "ema.safetensors", "trainer_state.pt", "config.yaml", "meta.json",
)
# A run directory keeps its checkpoints here; ``latest`` points at the one a resumed run continues from.
CHECKPOINTS_DIR, LATEST, STATE_PREFIX = "checkpoints", "latest", "state-"


class CheckpointError(ValueError):
    """A checkpoint directory that is incomplete, truncated or unreadable."""


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


def _file_mode() -> int:
    # safetensors creates its files 0600; everything else a run writes follows the umask (usually 0644).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    ema_model: nn.Module | None = None,
    trainer_state: dict[str, Any] | None = None,
    config: DictConfig | dict | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return it.

    An ``ema_model`` equal to ``model`` is stored once (``meta.json`` records ``ema_is_model``).
    """
    path = Path(path)
    if model is None and ema_model is None:
        raise ValueError(f"save_checkpoint({path}): nothing to save (no model and no ema_model)")
    ema_is_model = model is not None and ema_model is not None and _same_weights(model, ema_model)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        if model is not None:
            save_model(model, str(tmp / MODEL_FILE))
        if ema_model is not None and not ema_is_model:
            save_model(ema_model, str(tmp / EMA_FILE))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE_FILE)
        if config is not None:
            cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
            OmegaConf.save(cfg, tmp / CONFIG_FILE, resolve=True)
        mode = _file_mode()
        files = {}
        for file in sorted(tmp.iterdir()):
            file.chmod(mode)
            files[file.name] = file.stat().st_size
        record = {"time": time.time(), **(meta or {}), "files": files}
        if ema_is_model:
            record["ema_is_model"] = True
        (tmp / META_FILE).write_text(json.dumps(record, indent=1))
        (tmp / META_FILE).chmod(mode)
    return path


def validate_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """The meta of a complete checkpoint; :class:`CheckpointError` naming the file if anything is missing or truncated."""
    path = Path(checkpoint)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: it has no {META_FILE} (written last)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_file} cannot be read ({exc}); the checkpoint is damaged") from None
    for name, size in meta.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file} is {file.stat().st_size} bytes, {META_FILE} says {size}: truncated or replaced")
    return meta


def _require(path: Path, name: str) -> Path:
    file = path / name
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no {name} (expected a directory written by save_checkpoint)")
    return file


def _ema_is_model(path: Path) -> bool:
    return (path / META_FILE).is_file() and bool(read_meta(path).get("ema_is_model"))


def _weights_file(path: Path, ema: bool) -> Path:
    if ema and not (path / EMA_FILE).is_file() and _ema_is_model(path):
        return _require(path, MODEL_FILE)
    return _require(path, EMA_FILE if ema else MODEL_FILE)


def has_ema(checkpoint: str | Path) -> bool:
    """Whether a checkpoint carries EMA weights (stored, or equal to the model's)."""
    path = Path(checkpoint)
    return (path / EMA_FILE).is_file() or _ema_is_model(path)


def load_weights(model: nn.Module, checkpoint: str | Path, *, ema: bool = False, strict: bool = True) -> nn.Module:
    """Load ``model.safetensors`` (or the EMA weights) of a checkpoint into ``model``."""
    file = _weights_file(Path(checkpoint), ema)
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except Exception as exc:  # safetensors raises its own error types for truncated headers and data
        raise CheckpointError(f"{file} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or corrupt") from None
    if strict and (missing or unexpected):
        raise ValueError(f"{file} does not match the model: missing keys {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    return model


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The trainer state dict of a checkpoint (optimiser, scheduler, counters, RNG states)."""
    file = _require(Path(checkpoint), STATE_FILE)
    try:
        # weights_only=False: the state holds RNG tuples and numpy arrays written by this project.
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{file} cannot be read ({type(exc).__name__}: {exc}); the file is truncated or corrupt") from None


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
    file = _require(Path(checkpoint), META_FILE)
    try:
        return json.loads(file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{file} cannot be read ({exc}); the checkpoint is damaged") from None


def save_resumable(run_dir: str | Path, step: int, **checkpoint_kwargs: Any) -> Path:
    """Write ``checkpoints/state-<step>``, point ``latest`` at it, then drop the older resumable ones."""
    directory = Path(run_dir) / CHECKPOINTS_DIR
    name = f"{STATE_PREFIX}{step:08d}"
    target = save_checkpoint(directory / name, **checkpoint_kwargs)
    point_link(directory / LATEST, name)
    for stale in directory.glob(f"{STATE_PREFIX}*"):
        if stale.name != name and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return target


def find_resumable(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint with trainer state in a run, and why each other candidate was refused.

    Candidates are ``latest`` and every ``state-*`` (a kill between writing one and pointing ``latest``
    at it leaves the newer one unreferenced), newest step first.
    """
    directory = Path(run_dir) / CHECKPOINTS_DIR
    candidates = [p for p in directory.glob(f"{STATE_PREFIX}*") if p.is_dir()] if directory.is_dir() else []
    latest = directory / LATEST
    if latest.is_dir() and not latest.is_symlink():  # a run written before latest became a link to a state-*
        candidates.append(latest)
    refused, found = [], []
    for path in candidates:
        try:
            meta = validate_checkpoint(path)
            _require(path, STATE_FILE)
        except (CheckpointError, FileNotFoundError) as exc:
            refused.append(str(exc))
            continue
        found.append((int(meta.get("step", -1)), path))
    if not found:
        return None, refused
    return max(found, key=lambda sp: sp[0])[1], refused


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
                try:
                    found.append((float(read_meta(p).get("score", float("-inf"))), p))
                except CheckpointError:
                    continue  # a damaged one ranks nowhere; it is replaced when a better score comes
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
