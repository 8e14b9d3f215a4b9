"""Zarr replay buffer: all episodes concatenated along time in ``data/<key>``, cumulative ends in ``meta/episode_ends``.

This is the layout of the public Diffusion Policy stores (``pusht_cchi_v7_replay.zarr``, zarr format 2) and of
the stores we generate. ``ReplayBuffer.open`` reads a directory store or a ``.zarr.zip``, either copied into
memory (numpy) or lazily (zarr arrays, decompressed on access); ``ReplayBufferWriter`` / ``write_replay_buffer``
create a format-2 store under a temporary name and rename it into place, so a kill never leaves half a store.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, temporary_name
from .integrity import MANIFEST_ATTR, check_chunks, check_manifest, manifest, read_array

__all__ = [
    "ArraySpec",
    "ReplayBuffer",
    "ReplayBufferError",
    "ReplayBufferWriter",
    "write_replay_buffer",
]

DATA_GROUP = "data"
EPISODE_ENDS = "meta/episode_ends"


class ReplayBufferError(ValueError):
    """A replay buffer store (or in-memory data) that does not have the expected layout."""


@dataclass(frozen=True)
class ArraySpec:
    """What one ``data/<key>`` array must look like.

    ``shape`` is the per-step shape (without the leading time axis); ``None`` entries match any size.
    ``dtype`` is a numpy dtype name (``"uint8"``), ``"float"`` / ``"integer"`` for any dtype of that kind,
    or ``None`` for any dtype. ``description`` is used in error messages (e.g. ``"(n, H, W, 3) uint8 images"``).
    """

    shape: tuple[int | None, ...] | None = None
    dtype: str | None = None
    description: str = ""

    def problem(self, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
        """Why an array of this ``shape`` (time axis included) and ``dtype`` does not match, or None."""
        expected = self.description or self._describe()
        if self.shape is not None:
            step = tuple(shape[1:])
            if len(shape) < 1 or len(step) != len(self.shape) or any(
                want is not None and want != got for want, got in zip(self.shape, step)
            ):
                return f"has shape {tuple(shape)}, expected {expected}"
        if self.dtype is not None:
            dtype = np.dtype(dtype)
            ok = (
                np.issubdtype(dtype, np.floating) if self.dtype == "float"
                else np.issubdtype(dtype, np.integer) if self.dtype == "integer"
                else dtype == np.dtype(self.dtype)
            )
            if not ok:
                return f"has dtype {dtype}, expected {expected}"
        return None

    def _describe(self) -> str:
        shape = "(n" + "".join(f", {'?' if s is None else s}" for s in (self.shape or ())) + ")"
        return f"{shape} {self.dtype or 'any dtype'}"


def _is_zip(path: Path) -> bool:
    return path.suffix == ".zip"


def _zip_root(path: Path) -> str | None:
    """Path of the zarr root group inside a zip: '' at the top, or a folder (zips of a ``*.zarr`` directory)."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    markers = (".zgroup", "zarr.json")
    if any(name in markers for name in names):
        return None
    roots = sorted(
        (name.rsplit("/", 1)[0] for name in names if name.rsplit("/", 1)[-1] in markers and "/" in name),
        key=lambda p: p.count("/"),
    )
    if not roots:
        raise ReplayBufferError(f"{path}: no zarr group found in the zip (no .zgroup or zarr.json entry)")
    return roots[0]


def _open_root(path: Path) -> tuple[Any, Any]:
    """Open a store read-only; returns (root group, store or None) — the store must be closed for zips."""
    import zarr
    from zarr.storage import ZipStore

    if not path.exists():
        raise FileNotFoundError(f"replay buffer {path} does not exist")
    try:
        if _is_zip(path):
            sub = _zip_root(path)
            store = ZipStore(path, mode="r")
            return zarr.open_group(store, mode="r", path=sub), store
        return zarr.open_group(str(path), mode="r"), None
    except ReplayBufferError:
        raise
    except Exception as exc:  # zarr raises a variety of errors for non-stores
        raise ReplayBufferError(f"{path}: not a readable zarr group ({type(exc).__name__}: {exc})") from exc


class ReplayBuffer:
    """Episodes concatenated along time: ``buffer[key]`` is an (n_steps, ...) array, ``episode_ends`` int64.

    Construct from arrays (``ReplayBuffer(data, episode_ends)``) or from a store (``ReplayBuffer.open``).
    In lazy mode ``buffer[key]`` is a read-only zarr array (slicing returns numpy); the store is reopened
    after a fork, so DataLoader workers do not share a zip file handle.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        episode_ends: Any,
        *,
        source: str = "<memory>",
        specs: Mapping[str, ArraySpec] | None = None,
    ) -> None:
        self.source = source
        self._data: dict[str, Any] = {
            k: v if isinstance(v, np.ndarray) or type(v).__module__.startswith("zarr") else np.asarray(v)
            for k, v in data.items()
        }
        self._episode_ends = np.asarray(episode_ends)
        self._path: Path | None = None
        self._lazy_keys: list[str] | None = None
        self._pid = os.getpid()
        self._store: Any = None
        self._validate(specs or {})
        self._episode_ends = self._episode_ends.astype(np.int64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        keys: Iterable[str] | None = None,
        *,
        in_memory: bool = True,
        specs: Mapping[str, ArraySpec] | None = None,
    ) -> "ReplayBuffer":
        """Read a format-2 (or 3) store: a directory or a ``.zip``. ``keys`` selects ``data/<key>`` arrays (default all).

        ``specs`` maps keys to the ``ArraySpec`` they must satisfy; keys in ``specs`` must exist.
        """
        path = Path(path)
        root, store = _open_root(path)
        try:
            arrays, episode_ends = cls._read_layout(root, path, keys, specs or {})
            # Every chunk must be there (zarr reads a missing one as zeros), and a store we wrote must
            # still match the manifest recorded when it was complete.
            check_chunks(root, path, names=[f"{DATA_GROUP}/{k}" for k in arrays] + [EPISODE_ENDS])
            if MANIFEST_ATTR in root.attrs:
                check_manifest(root, path, root.attrs[MANIFEST_ATTR])
            if in_memory:
                arrays = {k: read_array(v, path, f"{DATA_GROUP}/{k}") for k, v in arrays.items()}
            buffer = cls(arrays, episode_ends, source=str(path), specs=specs)
        except BaseException:
            if store is not None:
                store.close()
            raise
        if in_memory:
            if store is not None:
                store.close()
        else:
            buffer._path = path
            buffer._lazy_keys = list(arrays)
            buffer._store = store
        return buffer

    @staticmethod
    def _read_layout(root: Any, path: Path, keys: Iterable[str] | None, specs: Mapping[str, ArraySpec]):
        import zarr

        if DATA_GROUP not in root or not isinstance(root[DATA_GROUP], zarr.Group):
            raise ReplayBufferError(f"{path}: missing group 'data' (expected data/<key> arrays and meta/episode_ends)")
        if "meta" not in root or "episode_ends" not in root["meta"]:
            raise ReplayBufferError(f"{path}: missing array 'meta/episode_ends' (int64 cumulative episode ends)")
        group = root[DATA_GROUP]
        available = sorted(group.array_keys())
        wanted = available if keys is None else list(dict.fromkeys([*keys, *specs]))
        for key in wanted:
            if key not in available:
                raise ReplayBufferError(f"{path}: missing key 'data/{key}'; the store has data/{available}")
        arrays = {key: group[key] for key in wanted}
        episode_ends = read_array(root[EPISODE_ENDS], path, EPISODE_ENDS)
        return arrays, episode_ends

    def _validate(self, specs: Mapping[str, ArraySpec]) -> None:
        where = self.source
        ends = self._episode_ends
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise ReplayBufferError(
                f"{where}: meta/episode_ends has shape {ends.shape} dtype {ends.dtype}, expected a 1-D integer array"
            )
        if len(ends) == 0:
            raise ReplayBufferError(f"{where}: empty replay buffer (meta/episode_ends has no episodes)")
        if not self._data:
            raise ReplayBufferError(f"{where}: empty replay buffer (no data/<key> arrays)")
        for key in specs:
            if key not in self._data:
                raise ReplayBufferError(f"{where}: missing key 'data/{key}'; have data/{sorted(self._data)}")
        if ends[0] <= 0:
            raise ReplayBufferError(f"{where}: meta/episode_ends[0] = {int(ends[0])}, expected > 0 (episodes are non-empty)")
        steps = np.diff(ends)
        if np.any(steps <= 0):
            bad = int(np.argmax(steps <= 0)) + 1
            raise ReplayBufferError(
                f"{where}: meta/episode_ends is not strictly increasing: episode_ends[{bad}] = {int(ends[bad])} "
                f"after episode_ends[{bad - 1}] = {int(ends[bad - 1])}"
            )
        n_steps = int(ends[-1])
        for key, arr in self._data.items():
            shape = tuple(arr.shape)
            if len(shape) == 0 or shape[0] != n_steps:
                raise ReplayBufferError(
                    f"{where}: data/{key} has {shape[0] if shape else 0} steps (shape {shape}), but "
                    f"meta/episode_ends[-1] = {n_steps}; expected the episodes to cover all data"
                )
            if key in specs:
                problem = specs[key].problem(shape, np.dtype(arr.dtype))
                if problem:
                    raise ReplayBufferError(f"{where}: data/{key} {problem}")

    # ------------------------------------------------------------------ lazy access
    def _arrays(self) -> dict[str, Any]:
        if self._lazy_keys is not None and (self._pid != os.getpid() or not self._data):
            root, store = _open_root(self._path)
            self._data = {k: root[DATA_GROUP][k] for k in self._lazy_keys}
            self._store, self._pid = store, os.getpid()
        return self._data

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._lazy_keys is not None:  # do not pickle open zarr handles; reopen in the new process
            state["_data"], state["_store"] = {}, None
        return state

    def close(self) -> None:
        """Close the zip file of a lazy buffer (no-op otherwise)."""
        if self._store is not None:
            self._store.close()
            self._store = None
            self._data = {}

    # ------------------------------------------------------------------ public API
    @property
    def in_memory(self) -> bool:
        return self._lazy_keys is None

    @property
    def episode_ends(self) -> np.ndarray:
        """Cumulative end index of each episode (int64, read-only view)."""
        view = self._episode_ends.view()
        view.setflags(write=False)
        return view

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self._episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._episode_ends])).astype(np.int64)

    @property
    def n_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1])

    def keys(self) -> list[str]:
        return list(self._lazy_keys if self._lazy_keys is not None else self._data)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> Any:
        arrays = self._arrays()
        if key not in arrays:
            raise KeyError(f"{self.source}: no key {key!r} in the replay buffer; have {self.keys()}")
        return arrays[key]

    def __len__(self) -> int:
        return self.n_steps

    def episode_slice(self, index: int) -> slice:
        """Rows of episode ``index`` (negative indices count from the end)."""
        n = self.n_episodes
        if not -n <= index < n:
            raise IndexError(f"episode {index} out of range for {n} episodes")
        index %= n
        start = 0 if index == 0 else int(self._episode_ends[index - 1])
        return slice(start, int(self._episode_ends[index]))

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of one episode as numpy arrays."""
        rows = self.episode_slice(index)
        return {k: np.asarray(self[k][rows]) for k in (keys if keys is not None else self.keys())}

    def rows(self, episode_mask: np.ndarray) -> np.ndarray:
        """Row indices of the episodes selected by a boolean mask of length n_episodes."""
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != (self.n_episodes,):
            raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected ({self.n_episodes},)")
        starts, ends = self.episode_starts, self._episode_ends
        parts = [np.arange(s, e) for s, e, m in zip(starts, ends, episode_mask) if m]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def gather(self, key: str, episode_mask: np.ndarray) -> np.ndarray:
        """All rows of ``key`` from the selected episodes, concatenated (numpy)."""
        arr = self[key]
        parts = [np.asarray(arr[self.episode_slice(i)]) for i in np.nonzero(np.asarray(episode_mask))[0]]
        if not parts:
            return np.zeros((0,) + tuple(arr.shape[1:]), dtype=arr.dtype)
        return np.concatenate(parts)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write this buffer as a format-2 store (directory, or a zip when the name ends in ``.zip``)."""
        return write_replay_buffer(path, {k: self[k] for k in self.keys()}, self._episode_ends, overwrite=overwrite)

    def __repr__(self) -> str:
        mode = "in memory" if self.in_memory else "lazy"
        shapes = ", ".join(f"{k}: {tuple(self[k].shape)} {self[k].dtype}" for k in self.keys())
        return f"ReplayBuffer({self.source!r}, {self.n_episodes} episodes, {self.n_steps} steps, {mode}; {shapes})"


# ---------------------------------------------------------------------- writing
def _default_compressor(step_shape: tuple[int, ...], dtype: np.dtype) -> Any:
    import numcodecs

    if dtype == np.uint8 and len(step_shape) == 3:  # images: compressed, one frame per chunk
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    return None  # low-dim arrays uncompressed (as the reference stores them)


def _time_chunk(step_shape: tuple[int, ...], dtype: np.dtype) -> int:
    if dtype == np.uint8 and len(step_shape) == 3:
        return 1
    row_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * dtype.itemsize)
    return max(1, min((1 << 20) // row_bytes, 1 << 16))


class ReplayBufferWriter:
    """Append episodes to a new format-2 store; ``close()`` writes ``meta/`` and moves the store into place.

    The one writer of replay buffers (generated demonstrations, converted datasets), fed episode by
    episode. The store is built under a hidden temporary name next to ``path`` and published with
    ``fibpolicy.atomic``; a path ending in ``.zip`` is packed into an uncompressed zip at the end. Each
    episode may carry scalars (``meta={"seed": 3}``), stored as ``meta/episode_<name>`` arrays; ``attrs``
    go to the root group. Use as a context manager: an exception discards the temporary store.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        compressors: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"replay buffer {self.path} already exists (pass overwrite=True to replace it)")
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._build_dir = temporary_name(self.path, "build")
        self._root = zarr.open_group(str(self._build_dir), mode="w", zarr_format=2)
        self._data = self._root.create_group(DATA_GROUP)
        self._root.create_group("meta")
        self._attrs = dict(attrs or {})
        self._compressors = dict(compressors or {})
        self._ends: list[int] = []
        self._episode_meta: dict[str, list[Any]] = {}
        self._specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._arrays: dict[str, Any] = {}
        self._closed = False

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return self._ends[-1] if self._ends else 0

    def add_episode(self, episode: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
        """Append one episode: a dict of (T, ...) arrays with the same T and, after the first, the same keys."""
        if self._closed:
            raise RuntimeError(f"writer for {self.path} is closed")
        arrays = {k: np.asarray(v) for k, v in episode.items()}
        if not arrays:
            raise ReplayBufferError(f"{self.path}: episode {self.n_episodes} has no arrays")
        lengths = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
        length = next(iter(lengths.values()))
        if length <= 0 or any(n != length for n in lengths.values()):
            raise ReplayBufferError(f"{self.path}: episode {self.n_episodes} has lengths {lengths}, expected one length > 0")
        meta = dict(meta or {})
        if self._ends and set(meta) != set(self._episode_meta):
            raise ReplayBufferError(
                f"{self.path}: episode {self.n_episodes} has meta {sorted(meta)}, expected {sorted(self._episode_meta)}"
            )
        if not self._specs:
            for key, arr in arrays.items():
                step, dtype = tuple(arr.shape[1:]), arr.dtype
                compressor = self._compressors.get(key, _default_compressor(step, dtype))
                # write_empty_chunks: an all-zero chunk is stored too, so that a missing chunk always
                # means a damaged store (see fibpolicy.data.integrity).
                self._arrays[key] = self._data.create_array(
                    key, shape=(0, *step), chunks=(_time_chunk(step, dtype), *step), dtype=dtype,
                    compressor=compressor, fill_value=0, config={"write_empty_chunks": True},
                )
                self._specs[key] = (step, dtype)
        if set(arrays) != set(self._specs):
            raise ReplayBufferError(
                f"{self.path}: episode {self.n_episodes} has keys {sorted(arrays)}, expected {sorted(self._specs)}"
            )
        for key, arr in arrays.items():
            step, dtype = self._specs[key]
            if tuple(arr.shape[1:]) != step or arr.dtype != dtype:
                raise ReplayBufferError(
                    f"{self.path}: episode {self.n_episodes} data/{key} is {arr.shape} {arr.dtype}, "
                    f"expected (T, {', '.join(map(str, step))}) {dtype} like the first episode"
                )
        for key, arr in arrays.items():
            self._arrays[key].append(arr, axis=0)
        for key, value in meta.items():
            self._episode_meta.setdefault(key, []).append(value)
        self._ends.append(self.n_steps + length)

    def close(self) -> Path:
        """Finish the store and move it to ``path``; returns ``path``."""
        if self._closed:
            return self.path
        if not self._ends:
            self.abort()
            raise ReplayBufferError(f"{self.path}: no episodes were added; refusing to write an empty replay buffer")
        try:
            meta = self._root["meta"]
            meta.create_array(
                "episode_ends", data=np.asarray(self._ends, dtype=np.int64), chunks=(len(self._ends),), compressor=None,
            )
            for key, values in self._episode_meta.items():
                meta.create_array(f"episode_{key}", data=np.asarray(values), chunks=(len(values),), compressor=None)
            self._root.attrs.update({**self._attrs, MANIFEST_ATTR: manifest(self._root)})
            with atomic_path(self.path, overwrite=self.overwrite) as tmp:
                if _is_zip(self.path):
                    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                        for file in sorted(p for p in self._build_dir.rglob("*") if p.is_file()):
                            zf.write(file, file.relative_to(self._build_dir).as_posix())
                else:
                    os.replace(self._build_dir, tmp)
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Discard the temporary store."""
        self._closed = True
        shutil.rmtree(self._build_dir, ignore_errors=True)

    def __enter__(self) -> "ReplayBufferWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_replay_buffer(
    path: str | os.PathLike,
    data: Mapping[str, Any],
    episode_ends: Any,
    *,
    overwrite: bool = False,
    compressors: Mapping[str, Any] | None = None,
) -> Path:
    """Create a format-2 store at ``path`` from concatenated arrays and cumulative ``episode_ends``.

    The data is validated first (same rules as reading), so a bad store is never written.
    """
    buffer = ReplayBuffer(data, episode_ends, source=str(path))
    with ReplayBufferWriter(path, overwrite=overwrite, compressors=compressors) as writer:
        for i in range(buffer.n_episodes):
            writer.add_episode(buffer.get_episode(i))
    return Path(path)
