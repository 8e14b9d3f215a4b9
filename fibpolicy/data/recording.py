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

import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from .replay_buffer import ReplayBufferError, ReplayBufferWriter

__all__ = ["EpisodeWriter", "demo_recipe", "ensure_demos", "record_demos"]

EpisodeSource = Callable[[], Iterable[Mapping[str, Any]]] | Iterable[Mapping[str, Any]]


class EpisodeWriter(Protocol):
    """What ``record_demos`` writes through: a context manager that publishes the file on a clean exit."""

    n_episodes: int
    n_steps: int

    def __enter__(self) -> "EpisodeWriter": ...

    def __exit__(self, *exc: Any) -> Any: ...

    def add_episode(self, data: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> Any: ...


def record_demos(
    path: str | os.PathLike,
    source: EpisodeSource,
    *,
    total: int | None = None,
    keep_failed: bool = False,
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
    writer: Callable[..., EpisodeWriter] = ReplayBufferWriter,
) -> dict[str, Any]:
    """Write every episode of ``source`` (only successful ones unless ``keep_failed``) to ``path``.

    ``writer(path, overwrite=, attrs=)`` is the file format: a zarr replay buffer by default, or any
    context manager with ``add_episode(data, meta)``, ``n_episodes`` and ``n_steps`` (robomimic's HDF5
    layout: :class:`fibpolicy.data.robomimic_demos.RobomimicHDF5Writer`). The output appears at ``path``
    only when complete. ``total`` (the progress bar's length) defaults to the source's ``episodes``
    setting. Returns a summary: episodes seen and written, success rate, mean length, frames, seconds, path.
    """
    path = Path(path)
    start = time.perf_counter()
    if total is None:
        total = (getattr(source, "keywords", None) or {}).get("episodes")
    episodes = source() if callable(source) else source
    lengths, n_success = [], 0
    bar = tqdm(total=total, desc=f"demos -> {path.name}", unit="ep", disable=not progress, file=sys.stderr)
    try:
        with writer(path, overwrite=overwrite, attrs=attrs) as sink:
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
                    sink.add_episode(data, episode.get("meta"))
                bar.update(1)
                bar.set_postfix(success=f"{n_success / len(lengths):.0%}", frames=sink.n_steps)
            if not lengths:
                raise ReplayBufferError(f"{path}: the episode source yielded no episodes")
            if sink.n_episodes == 0:
                raise ReplayBufferError(
                    f"{path}: none of the {len(lengths)} episodes succeeded; nothing to write (keep_failed=True keeps them)"
                )
            written, frames = sink.n_episodes, sink.n_steps
    finally:
        bar.close()
        # A generator source frees its simulators now, not whenever it is garbage-collected.
        close = getattr(episodes, "close", None)
        if callable(close):
            close()
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


RECIPE_ATTR = "fibpolicy_recipe"
# Keywords of a source that change how fast it records, not what.
NOT_RECIPE = frozenset({"workers", "progress"})


def demo_recipe(source: EpisodeSource, *, keep_failed: bool = False) -> dict[str, Any] | None:
    """Everything that decides what a recording holds: the source callable, all its settings (defaults
    filled in), ``keep_failed`` and the source module's ``RECIPE_VERSION``; None for a plain iterable."""
    func = getattr(source, "func", source)
    if not callable(func):
        return None
    keywords = dict(getattr(source, "keywords", {}) or {})
    try:
        bound = inspect.signature(func).bind_partial(*getattr(source, "args", ()), **keywords)
        bound.apply_defaults()
        settings = dict(bound.arguments)
    except (TypeError, ValueError):
        settings = keywords
    module = sys.modules.get(getattr(func, "__module__", ""), None)
    recipe = {
        "source": f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}",
        "settings": {k: v for k, v in settings.items() if k not in NOT_RECIPE},
        "keep_failed": bool(keep_failed),
        "version": getattr(module, "RECIPE_VERSION", None),
    }
    return json.loads(json.dumps(recipe, default=repr))  # what the store's attrs will hold, compared as such


def _stored_recipe(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(RECIPE_ATTR)
    except Exception:  # not a directory store we can read: the dataset's own checks will say why
        return None


def ensure_demos(path: str | os.PathLike, source: EpisodeSource, **kwargs: Any) -> Path:
    """``path`` if it exists and was recorded the way ``source`` would record it; otherwise record it first.

    ``kwargs`` as for ``record_demos``. A store this project recorded carries its recipe
    (:func:`demo_recipe`); one recorded with other settings is refused, naming them, rather than
    silently reused. A store without a recipe (a public dataset, the user's own) is used as it is.
    """
    path = Path(path)
    recipe = demo_recipe(source, keep_failed=bool(kwargs.get("keep_failed", False)))
    if path.exists() and not kwargs.get("overwrite"):
        stored = _stored_recipe(path)
        if stored is not None and recipe is not None and stored != recipe:
            diffs = _recipe_differences(stored, recipe)
            raise ReplayBufferError(
                f"{path} was recorded with other settings than this run asks for ({diffs}); delete it, pass "
                "task.prepare.overwrite=true to record it again, or point the dataset at another path"
            )
        return path
    if recipe is not None:
        kwargs["attrs"] = {**(kwargs.get("attrs") or {}), RECIPE_ATTR: recipe}
    print(f"[fibpolicy] {path} not found: recording demonstrations (cached for later runs)", file=sys.stderr)
    try:
        summary = record_demos(path, source, **kwargs)
    except FileExistsError:
        if path.exists():  # another process (e.g. another DDP rank) finished the same recording first
            return path
        raise
    print(f"[fibpolicy] demonstrations ready: {json.dumps(summary)}", file=sys.stderr)
    return path


def _recipe_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    flat = lambda r: {**{k: v for k, v in r.items() if k != "settings"}, **{f"settings.{k}": v for k, v in r.get("settings", {}).items()}}  # noqa: E731
    a, b = flat(stored), flat(wanted)
    return ", ".join(f"{k}: stored {a.get(k)!r}, asked {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
