"""A run directory belongs to one run: claimed with a lock, refused when it already holds another run, and
checked against the checkpoint's configuration before a resumed run writes anything.

What a run directory holds, what ``resume=true`` checks and which settings it lets change are listed in
the README ("Runs and checkpoints"); :data:`SAFE_RESUME_KEYS` is that list.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..atomic import clean_orphans, write_text
from ..checkpoint import CHECKPOINTS_DIR, CONFIG_FILE, find_resumable, load_config, read_meta

__all__ = ["SAFE_RESUME_KEYS", "RunDirectoryError", "config_differences", "continuation_overrides", "run_directory",
           "write_run_config"]

LOCK_FILE = ".lock"
# Any of these means the directory already holds a run.
RUN_MARKERS = (CONFIG_FILE, "metrics.jsonl", CHECKPOINTS_DIR)
# What ``overwrite=true`` removes: the entries a run writes, nothing else a user may keep there.
RUN_ENTRIES = (*RUN_MARKERS, "tb", "videos", "train.log", ".hydra", "confusion_matrix.png", "confusion_matrix.csv")
# Settings a resumed run may change: none of them alters the numbers of the steps already taken or the
# data, model, optimiser and batch of the steps to come (num_epochs / max_steps only extend or shorten it).
SAFE_RESUME_KEYS = (
    "resume", "run_dir", "overwrite",
    "training.trainer.num_epochs", "training.trainer.max_steps", "training.trainer.max_minutes",
    "training.trainer.progress", "training.trainer.log_every_steps", "training.trainer.val_every_epochs",
    "training.trainer.eval_every_epochs", "training.trainer.checkpoint_every_epochs",
    "training.trainer.checkpoint_every_steps", "training.trainer.topk",
    "task.evaluator.progress", "task.prepare.progress", "task.prepare.source.workers",
)
_LENGTH_KEYS = ("training.trainer.num_epochs", "training.trainer.max_steps")


class RunDirectoryError(RuntimeError):
    """A run directory that cannot be used as asked (in use, holding another run, or a changed config)."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def config_differences(old: DictConfig | Mapping, new: DictConfig | Mapping) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose resolved values differ between two configs: ``{key: (old, new)}``."""
    def plain(cfg: Any) -> dict[str, Any]:
        return _flatten(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg)

    a, b = plain(old), plain(new)
    missing = object()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)}


def _holds_run(run_dir: Path) -> list[str]:
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def continuation_overrides(run_dir: str | Path) -> list[str]:
    """The overrides that carry on whatever ``run_dir`` holds, for scripts that rerun an interrupted run.

    Nothing there: ``[]`` (a new run). A resumable checkpoint: ``["resume=true"]`` (exact, and a finished
    run only reports itself finished). A run killed before its first checkpoint, or whose checkpoints are
    all torn, has nothing to resume, so ``["overwrite=true"]`` starts it again, and that is said aloud.
    """
    run_dir = Path(run_dir)
    found = _holds_run(run_dir)
    if not found:
        return []
    checkpoint, _ = find_resumable(run_dir)
    if checkpoint is not None:
        return ["resume=true"]
    print(f"[fibpolicy] {run_dir} holds a run ({', '.join(found)}) but no complete checkpoint to resume "
          "(killed before its first one, or the one there is torn): starting it again", flush=True)
    return ["overwrite=true"]


def _is_main_process() -> bool:
    # Under torchrun every rank runs this; only rank 0 claims, checks and writes.
    return int(os.environ.get("RANK", "0")) == 0


def _lock(run_dir: Path) -> int:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirectoryError(
            f"run_dir {run_dir} is in use by another process (pid {holder}); wait for it or choose another run_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _report_orphans(directories: list[Path]) -> None:
    done = [entry for d in dict.fromkeys(directories) for entry in clean_orphans(d)]
    if done:
        total = sum(size for _, _, size in done) / 2**20
        listed = ", ".join(f"{path} ({action})" for path, action, _ in done[:4]) + (" ..." if len(done) > 4 else "")
        print(f"[fibpolicy] cleaned {len(done)} temporaries left by killed processes ({total:.0f} MiB): {listed}", flush=True)


def _check_resume(cfg: DictConfig, run_dir: Path) -> None:
    checkpoint, refused = find_resumable(run_dir)
    if checkpoint is None:
        why = f" ({'; '.join(refused)})" if refused else ""
        raise RunDirectoryError(f"resume=true but run_dir {run_dir} holds no complete checkpoint to resume{why}")
    differences = config_differences(load_config(checkpoint), cfg)
    changed = {k: v for k, v in differences.items() if k not in SAFE_RESUME_KEYS}
    if changed:
        lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:12])
        raise RunDirectoryError(
            f"resume=true: the config differs from the one {checkpoint} was trained with, in settings that change "
            f"the numbers ({len(changed)}: {lines}). Resume with the same settings (only {', '.join(SAFE_RESUME_KEYS[3:])} "
            "may change), or start a new run_dir."
        )
    lengths = {k: v for k, v in differences.items() if k in _LENGTH_KEYS}
    if lengths:
        print(f"[fibpolicy] resume: run length changed ({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in lengths.items())}); "
              "the LR schedule follows the new length from here on", flush=True)
    meta = read_meta(checkpoint)
    print(f"[fibpolicy] resuming {run_dir} from step {meta.get('step')} (epoch {meta.get('epoch')})", flush=True)


@contextmanager
def run_directory(cfg: DictConfig) -> Iterator[Path]:
    """Claim ``cfg.run_dir`` for this run (see the module docstring); on a failure before anything was
    written, the directory this call created is removed again."""
    run_dir = Path(cfg.run_dir)
    main = _is_main_process()
    created = not run_dir.exists()
    fd = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(run_dir)
    try:
        if main:
            data_dirs = [Path(cfg.data_dir)] if cfg.get("data_dir") else []
            _report_orphans([run_dir, run_dir / CHECKPOINTS_DIR, *data_dirs])
            if cfg.get("resume"):
                _check_resume(cfg, run_dir)
            elif found := _holds_run(run_dir):
                if not cfg.get("overwrite"):
                    raise RunDirectoryError(
                        f"run_dir {run_dir} already holds a run ({', '.join(found)}); pass resume=true to continue it, "
                        "overwrite=true to replace it, or choose another run_dir"
                    )
                for name in RUN_ENTRIES:
                    entry = run_dir / name
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    elif entry.exists() or entry.is_symlink():
                        entry.unlink()
                print(f"[fibpolicy] overwrite=true: removed the previous run in {run_dir}", flush=True)
            else:
                print(f"[fibpolicy] run directory: {run_dir}", flush=True)
        yield run_dir
    except BaseException:
        if main and created and not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved ``config.yaml`` of the run (main process only), once its checks have passed."""
    if _is_main_process():
        write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
