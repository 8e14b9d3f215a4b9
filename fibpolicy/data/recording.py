"""Recording demonstrations into a replay buffer: the data-preparation step a task config names.

A task's ``prepare`` entry is, for PushT::

    prepare:
      _target_: fibpolicy.data.ensure_demos
      path: ${task.dataset.zarr_path}
      source: {_target_: envs.pusht.demos.expert_episodes, _partial_: true, episodes: 200}

``source`` is any callable (or iterable) giving episodes as ``{"data": {key: (T, ...) array}, "meta":
{name: scalar}, "success": bool}``; the project's env packages provide them (they know nothing of
fibpolicy), and this module writes them with the one ``ReplayBufferWriter``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .replay_buffer import ReplayBufferError, ReplayBufferWriter

__all__ = ["ensure_demos", "record_demos"]

EpisodeSource = Callable[[], Iterable[Mapping[str, Any]]] | Iterable[Mapping[str, Any]]


def record_demos(
    path: str | os.PathLike,
    source: EpisodeSource,
    *,
    total: int | None = None,
    keep_failed: bool = False,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write every episode of ``source`` (only successful ones unless ``keep_failed``) to a replay buffer at ``path``.

    The store appears at ``path`` only when complete. Returns a summary: episodes seen and written,
    success rate, mean length, frames, seconds, path.
    """
    path = Path(path)
    start = time.perf_counter()
    episodes = source() if callable(source) else source
    lengths, n_success = [], 0
    bar = tqdm(total=total, desc=f"demos -> {path.name}", unit="ep", disable=not progress, file=sys.stderr)
    try:
        with ReplayBufferWriter(path, overwrite=overwrite, attrs=attrs) as writer:
            for index, episode in enumerate(episodes):
                try:
                    data, success = episode["data"], bool(episode["success"])
                except (KeyError, TypeError):
                    raise ReplayBufferError(
                        f"{path}: episode {index} from the source is not a dict with 'data' and 'success' "
                        f"(got {type(episode).__name__})"
                    ) from None
                lengths.append(len(next(iter(data.values()))))
                n_success += success
                if success or keep_failed:
                    writer.add_episode(data, episode.get("meta"))
                bar.update(1)
                bar.set_postfix(success=f"{n_success / len(lengths):.0%}", frames=writer.n_steps)
            if not lengths:
                raise ReplayBufferError(f"{path}: the episode source yielded no episodes")
            if writer.n_episodes == 0:
                raise ReplayBufferError(
                    f"{path}: none of the {len(lengths)} episodes succeeded; nothing to write (keep_failed=True keeps them)"
                )
            written, frames = writer.n_episodes, writer.n_steps
    finally:
        bar.close()
    return {
        "path": str(path),
        "episodes": len(lengths),
        "episodes_written": written,
        "successes": n_success,
        "success_rate": n_success / len(lengths),
        "mean_length": float(np.mean(lengths)),
        "frames": frames,
        "seconds": time.perf_counter() - start,
    }


def ensure_demos(path: str | os.PathLike, source: EpisodeSource, **kwargs: Any) -> Path:
    """``path`` if it exists; otherwise record it from ``source`` first (``kwargs`` as for ``record_demos``)."""
    path = Path(path)
    if path.exists() and not kwargs.get("overwrite"):
        return path
    print(f"[fibpolicy] {path} not found: recording demonstrations (cached for later runs)", file=sys.stderr)
    try:
        summary = record_demos(path, source, **kwargs)
    except FileExistsError:
        if path.exists():  # another process (e.g. another DDP rank) finished the same recording first
            return path
        raise
    print(f"[fibpolicy] demonstrations ready: {json.dumps(summary)}", file=sys.stderr)
    return path
