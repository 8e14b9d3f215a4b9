"""Store integrity: every chunk a zarr array should have is there, and a chunk that cannot be read is named.

zarr reads a missing chunk as the fill value, so a store with a deleted ``data/action/0.0`` silently gives
``[0, 0]`` actions and a deleted image chunk black frames. :func:`check_chunks` lists the store once and
compares it with each array's chunk grid; :func:`read_array` turns a decoding failure into an error that
names the store, the array and the chunk. :func:`manifest` is what the writer records in the root attrs
(shapes, chunk counts, a checksum of ``meta/``) and :func:`check_manifest` compares a store with it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import zipfile
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["MANIFEST_ATTR", "StoreIntegrityError", "check_chunks", "check_manifest", "manifest", "read_array"]

MANIFEST_ATTR = "fibpolicy_manifest"


class StoreIntegrityError(ValueError):
    """A store whose chunks are missing, unreadable, or do not match its manifest."""


def _chunks(array: Any) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(store key relative to the store root, region) of every chunk in ``array``'s grid."""
    shape, chunks = tuple(array.shape), tuple(array.chunks)
    if any(n == 0 for n in shape):
        return
    grid = [range(math.ceil(n / c)) for n, c in zip(shape, chunks)] or [range(1)]
    metadata = array.metadata
    prefix = f"{array.path}/" if array.path else ""
    for coords in itertools.product(*grid):
        if metadata.zarr_format == 2:
            sep = getattr(metadata, "dimension_separator", None) or "."
            key = sep.join(map(str, coords)) if shape else "0"
        else:
            key = metadata.chunk_key_encoding.encode_chunk_key(coords)
        yield prefix + key, tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape))


def _store_files(path: Path) -> set[str]:
    """Every file key of a directory store or a zip store (posix, relative to the store root, as array paths are)."""
    if path.is_dir():
        return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    with zipfile.ZipFile(path) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def _arrays(root: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, array in root.arrays():
        yield prefix + name, array
    for name, group in root.groups():
        yield from _arrays(group, prefix + name + "/")


def check_chunks(root: Any, path: Path, *, names: Iterable[str] | None = None) -> None:
    """Raise :class:`StoreIntegrityError` naming the first arrays whose chunks are missing from the store.

    ``names``: the arrays to check (paths relative to ``root``, e.g. ``data/action``); default all.
    """
    files = _store_files(path)
    wanted = set(names) if names is not None else None
    problems = []
    for name, array in _arrays(root):
        if wanted is not None and name not in wanted:
            continue
        missing = [key for key, _ in _chunks(array) if key not in files]
        if missing:
            problems.append(f"{name}: {len(missing)} of {array.nchunks} chunks missing (first: {missing[0]})")
    if problems:
        raise StoreIntegrityError(
            f"{path}: incomplete store, zarr would read the missing chunks as zeros; " + "; ".join(problems[:4])
            + (f"; and {len(problems) - 4} more arrays" if len(problems) > 4 else "")
            + ". Regenerate or re-download it (a store written by zarr 3 with write_empty_chunks=False lacks "
            "all-zero chunks by design: rewrite it with fibpolicy.data.write_replay_buffer)."
        )


@contextmanager
def _quiet_asyncio() -> Iterator[None]:
    # zarr decodes chunks in asyncio tasks; when one fails the others are abandoned and asyncio logs a
    # "Task was destroyed but it is pending" per task. The error raised below says everything useful.
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_array(array: Any, path: Path, name: str) -> np.ndarray:
    """``array[...]`` as numpy; a chunk that fails to decode raises an error naming store, array and chunk."""
    try:
        with _quiet_asyncio():
            return np.asarray(array[...])
    except Exception as exc:  # codec errors come as RuntimeError, ValueError, zarr-specific types, ...
        first_error = exc
    bad = _first_bad_chunk(array)
    where = f"chunk {bad[0]}" if bad else "a chunk"
    detail = bad[1] if bad else first_error
    raise StoreIntegrityError(
        f"{path}: array {name}: {where} cannot be read ({type(detail).__name__}: {detail}); the store is "
        "truncated or corrupt. Regenerate or re-download it."
    ) from None


def _first_bad_chunk(array: Any) -> tuple[str, Exception] | None:
    for key, region in _chunks(array) if array.shape else ():
        try:
            with _quiet_asyncio():
                array[region]
        except Exception as exc:
            return key, exc
    return None


def _digest(values: np.ndarray) -> str:
    values = np.ascontiguousarray(values)
    return hashlib.sha256(values.dtype.str.encode() + str(values.shape).encode() + values.tobytes()).hexdigest()


def manifest(root: Any) -> dict[str, Any]:
    """Shapes, dtypes and chunk counts of every array, and a checksum of each ``meta/`` array."""
    arrays = {}
    for name, array in _arrays(root):
        entry = {"shape": list(array.shape), "dtype": str(array.dtype), "nchunks": int(array.nchunks)}
        if name.startswith("meta/"):
            entry["sha256"] = _digest(np.asarray(array[...]))
        arrays[name] = entry
    return {"version": 1, "arrays": arrays}


def check_manifest(root: Any, path: Path, expected: Mapping[str, Any]) -> None:
    """Compare a store with the manifest its writer recorded; raise naming the first difference."""
    recorded = expected.get("arrays", {})
    present = dict(_arrays(root))
    for name, entry in recorded.items():
        if name not in present:
            raise StoreIntegrityError(f"{path}: array {name} is listed in the store's manifest but missing")
        array = present[name]
        if list(array.shape) != list(entry["shape"]) or str(array.dtype) != entry["dtype"]:
            raise StoreIntegrityError(
                f"{path}: array {name} is {tuple(array.shape)} {array.dtype}, its manifest says "
                f"{tuple(entry['shape'])} {entry['dtype']}"
            )
        if "sha256" in entry and _digest(read_array(array, path, name)) != entry["sha256"]:
            raise StoreIntegrityError(f"{path}: array {name} does not match its manifest checksum (the store was modified)")
