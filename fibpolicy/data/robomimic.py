"""robomimic HDF5 files -> a cached zarr replay buffer the generic ``SequenceDataset`` reads.

A robomimic file (``data/demo_i/obs/<key>``, ``data/demo_i/actions``, ...; ours from
``python -m fibpolicy.record_robomimic_demos`` or a public one) is converted once, as the reference
does with its ``.zarr.zip`` cache: each observation key the task's ``shape_meta`` reads is copied under
its own name (images uint8 HWC, compressed), and the action is written as the store key
``shape_meta.action.source`` in one of three forms:

- ``abs_rot6d`` (default): absolute ``[pos 3, axis-angle 3, gripper]`` -> ``[pos 3, rot6d 6, gripper]``
  (10 per arm), read from ``action_key`` (``actions_abs`` in our files and robomimic's newer ones;
  Diffusion Policy's ``image_abs.hdf5`` keeps them in ``actions``);
- ``abs``: the absolute 7 numbers as stored;
- ``delta``: the normalised OSC deltas (7), usually ``action_key=actions``.

The cache records the source file's size and modification time and the conversion settings; a changed
source or other settings rebuild it. It is written through the one replay-buffer writer, so it appears
only when complete.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..rotation import ABS_ACTION_DIM, abs_action_to_rot6d
from ..shape_meta import ShapeMeta
from .replay_buffer import ReplayBufferError, ReplayBufferWriter

__all__ = ["ACTION_FORMS", "convert_robomimic", "ensure_robomimic_cache", "initial_states", "robomimic_demo_names"]

ACTION_FORMS = ("abs_rot6d", "abs", "delta")
# How many leading demos decide whether an "absolute" action key in fact holds deltas.
DELTA_CHECK_DEMOS = 20
CACHE_ATTR = "fibpolicy_robomimic_cache"
CACHE_VERSION = 1


def robomimic_demo_names(f: Any, path: str | os.PathLike) -> list[str]:
    """``demo_0 … demo_{N-1}`` of an open robomimic file, in numeric order, with errors naming the file."""
    if "data" not in f:
        raise ReplayBufferError(f"{path}: no 'data' group; not a robomimic HDF5 file")
    names = list(f["data"].keys())
    bad = [n for n in names if not (n.startswith("demo_") and n[5:].isdigit())]
    if bad:
        raise ReplayBufferError(f"{path}: data/ holds {bad[:3]}; expected only demo_<index> groups")
    if not names:
        raise ReplayBufferError(f"{path}: data/ holds no demos")
    return sorted(names, key=lambda n: int(n[5:]))


def _source_signature(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"source": str(path.resolve()), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def _cache_signature(hdf5_path: Path, shape_meta: ShapeMeta, action_key: str, action_form: str) -> dict[str, Any]:
    return {
        **_source_signature(hdf5_path),
        "obs_keys": shape_meta.obs_store_keys(),
        "action_store_key": shape_meta.action.source.key,
        "action_key": action_key,
        "action_form": action_form,
        "version": CACHE_VERSION,
    }


def _read_actions(group: Any, path: Path, name: str, action_key: str, action_form: str) -> np.ndarray:
    """One demo's stored actions (n, 7k), checked, with errors naming the file, demo and key."""
    if action_key not in group:
        hint = ""
        if action_form != "delta":
            hint = (" The task asks for absolute actions: record the file with "
                    "python -m fibpolicy.record_robomimic_demos (which writes actions_abs), or convert a delta "
                    "file with Diffusion Policy's robomimic_dataset_conversion.py "
                    "and set action_key=actions, or train on delta actions (action_form=delta).")
        raise ReplayBufferError(f"{path}: data/{name} has no {action_key!r} dataset (it has {sorted(group.keys())}).{hint}")
    actions = np.asarray(group[action_key][()], dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] == 0 or actions.shape[1] % ABS_ACTION_DIM:
        raise ReplayBufferError(
            f"{path}: data/{name}/{action_key} has shape {actions.shape}; expected (n, 7) [pos 3, rot 3, gripper] per arm"
        )
    if not np.isfinite(actions).all():
        raise ReplayBufferError(f"{path}: data/{name}/{action_key} holds non-finite values")
    return actions


def _looks_like_delta(rotations: list[np.ndarray]) -> bool:
    """Absolute robomimic rotations of a gripper pointing down have angle near pi; deltas stay within [-1, 1]."""
    rot = np.concatenate(rotations)
    return bool(np.abs(rot).max() <= 1.0 and np.linalg.norm(rot, axis=-1).max() <= 1.0)


def convert_robomimic(
    hdf5_path: str | os.PathLike,
    zarr_path: str | os.PathLike,
    shape_meta: Mapping[str, Any] | ShapeMeta,
    *,
    action_key: str = "actions_abs",
    action_form: str = "abs_rot6d",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the replay buffer of ``hdf5_path`` for ``shape_meta`` at ``zarr_path``; returns a summary."""
    import h5py

    meta = ShapeMeta(shape_meta)
    hdf5_path, zarr_path = Path(hdf5_path), Path(zarr_path)
    if action_form not in ACTION_FORMS:
        raise ValueError(f"action_form must be one of {ACTION_FORMS}, got {action_form!r}")
    obs_keys = meta.obs_store_keys()
    action_store = meta.action.source.key
    if action_store in obs_keys:
        raise ValueError(f"shape_meta: the action's store key {action_store!r} is also an observation key")
    signature = _cache_signature(hdf5_path, meta, action_key, action_form)
    frames, rotations = 0, []
    with h5py.File(hdf5_path, "r") as f:
        names = robomimic_demo_names(f, hdf5_path)
        bar = tqdm(names, desc=f"{hdf5_path.name} -> {zarr_path.name}", unit="demo", disable=not progress, file=sys.stderr)
        with ReplayBufferWriter(zarr_path, overwrite=overwrite, attrs={CACHE_ATTR: signature}) as writer:
            for name in bar:
                group = f["data"][name]
                if "obs" not in group:
                    raise ReplayBufferError(f"{hdf5_path}: data/{name} has no 'obs' group")
                episode: dict[str, np.ndarray] = {}
                for key in obs_keys:
                    if key not in group["obs"]:
                        raise ReplayBufferError(
                            f"{hdf5_path}: data/{name}/obs has no {key!r} (shape_meta reads it; the file has "
                            f"{sorted(group['obs'].keys())})"
                        )
                    episode[key] = group["obs"][key][()]
                actions = _read_actions(group, hdf5_path, name, action_key, action_form)
                episode[action_store] = (abs_action_to_rot6d(actions) if action_form == "abs_rot6d" else actions).astype(np.float32)
                if action_form != "delta" and len(rotations) < DELTA_CHECK_DEMOS:
                    rotations.append(actions[:, 3:6])
                    # Decided on the first demos, so a delta file fails in seconds rather than after converting.
                    if len(rotations) == min(DELTA_CHECK_DEMOS, len(names)) and _looks_like_delta(rotations):
                        raise ReplayBufferError(
                            f"{hdf5_path}: {action_key!r} looks like delta actions (every rotation within [-1, 1] in "
                            f"the first {len(rotations)} demos), but action_form={action_form!r} asks for absolute "
                            "ones; name the absolute actions with action_key (actions_abs in files from "
                            "python -m fibpolicy.record_robomimic_demos) or set action_form=delta"
                        )
                lengths = {k: len(v) for k, v in episode.items()}
                if len(set(lengths.values())) != 1:
                    raise ReplayBufferError(f"{hdf5_path}: data/{name} has obs and actions of different lengths {lengths}")
                if name == names[0]:
                    _check_first(hdf5_path, name, meta, episode)
                writer.add_episode(episode, {"demo": int(name[5:])})
                frames += lengths[action_store]
    return {"path": str(zarr_path), "source": str(hdf5_path), "episodes": len(names), "frames": frames,
            "action_form": action_form}


def _check_first(path: Path, name: str, meta: ShapeMeta, episode: Mapping[str, np.ndarray]) -> None:
    """Every declared key of the first demo must fit shape_meta; the error names the file, demo and key."""
    first = {k: v[:1] for k, v in episode.items()}
    for key, spec in meta.obs.items():
        try:
            spec.extract(first[spec.source.key], lead=1)
        except ValueError as err:
            raise ReplayBufferError(f"{path}: data/{name}/obs/{spec.source.key}: {err}") from None
    try:
        meta.action.extract(first[meta.action.source.key], lead=1)
    except ValueError as err:
        raise ReplayBufferError(f"{path}: data/{name} actions: {err}") from None


def _stored_signature(path: Path) -> dict[str, Any] | None:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs).get(CACHE_ATTR)
    except Exception:  # unreadable: treated like a missing signature
        return None


def ensure_robomimic_cache(
    hdf5_path: str | os.PathLike,
    zarr_path: str | os.PathLike,
    shape_meta: Mapping[str, Any] | ShapeMeta,
    *,
    action_key: str = "actions_abs",
    action_form: str = "abs_rot6d",
    generate: Callable[..., Any] | None = None,
    progress: bool = True,
) -> Path:
    """``zarr_path``, (re)built from ``hdf5_path`` unless it is an up-to-date cache of it.

    A missing HDF5 file is recorded first with ``generate(out=hdf5_path)`` (the scripted-expert demo
    generator the task config names), or is an error naming the file when there is none. A store at
    ``zarr_path`` that is not a cache made by this function is refused rather than overwritten.
    """
    hdf5_path, zarr_path = Path(hdf5_path), Path(zarr_path)
    if not hdf5_path.exists():
        if generate is None:
            raise FileNotFoundError(f"robomimic dataset {hdf5_path} does not exist (an HDF5 file in robomimic's layout)")
        print(f"[fibpolicy] {hdf5_path} not found: recording demonstrations with the scripted expert", file=sys.stderr)
        summary = generate(out=hdf5_path)
        print(f"[fibpolicy] demonstrations ready: {summary}", file=sys.stderr)
    meta = ShapeMeta(shape_meta)
    wanted = _cache_signature(hdf5_path, meta, action_key, action_form)
    if zarr_path.exists():
        stored = _stored_signature(zarr_path)
        if stored is None:
            raise ReplayBufferError(
                f"{zarr_path} exists but is not a cache of a robomimic file (no {CACHE_ATTR!r} attribute); "
                "delete it or point task.dataset.zarr_path elsewhere"
            )
        if stored == wanted:
            return zarr_path
        changed = ", ".join(k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k))
        print(f"[fibpolicy] {zarr_path} is out of date ({changed} changed): rebuilding it", file=sys.stderr)
    summary = convert_robomimic(hdf5_path, zarr_path, meta, action_key=action_key, action_form=action_form,
                                overwrite=True, progress=progress)
    print(f"[fibpolicy] cached {summary['episodes']} demos ({summary['frames']} frames) in {zarr_path}", file=sys.stderr)
    return zarr_path


def initial_states(hdf5_path: str | os.PathLike, n: int | None = None, start: int = 0) -> list[dict[str, np.ndarray]]:
    """Reset options ``{"state": states[0]}`` of demos ``start … start + n - 1`` (all when ``n`` is None):
    the reference's train inits."""
    import h5py

    hdf5_path = Path(hdf5_path)
    if not hdf5_path.exists():
        raise FileNotFoundError(f"robomimic dataset {hdf5_path} does not exist (its demos' first states are the train inits)")
    with h5py.File(hdf5_path, "r") as f:
        names = robomimic_demo_names(f, hdf5_path)
        n = len(names) - start if n is None else n
        if start + n > len(names) or n < 0:
            raise ValueError(f"{hdf5_path}: {n} train inits from demo {start} asked for, the file has {len(names)} demos")
        out = []
        for name in names[start : start + n]:
            if "states" not in f["data"][name]:
                raise ReplayBufferError(f"{hdf5_path}: data/{name} has no 'states' dataset (train inits reset to it)")
            out.append({"state": np.asarray(f["data"][name]["states"][0], dtype=np.float64)})
    return out
