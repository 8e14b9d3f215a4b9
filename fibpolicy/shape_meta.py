"""The observation / action contract of a policy task: the task config's ``shape_meta``, parsed once.

``shape_meta`` is the only place that declares keys, shapes and types. Each observation key gives its
``shape``, ``type`` (``rgb`` | ``low_dim``), ``source`` (where the value comes from in the store: a key,
or a slice of one along its flattened feature axis, such as ``state[:2]``) and ``norm`` (normaliser
mode). The action gets the same; its ``norm`` may be a list of per-dimension groups::

    shape_meta:
      obs:
        image: {shape: [3, 96, 96], type: rgb, source: img}
        agent_pos: {shape: [2], type: low_dim, source: "state[:2]"}
      action:
        shape: [10]
        source: action
        norm: [{dims: 3, mode: limits}, {dims: 6, mode: identity}, {dims: 1, mode: limits}]

The dataset (store windows) and the evaluator (env observations mapped to store keys) both turn stored
arrays into policy inputs with :meth:`ShapeMeta.extract_obs`, so the two cannot drift apart.
Defaults: ``source`` = the key itself, ``norm`` = ``image`` for rgb ([0, 1] -> [-1, 1]), ``limits`` otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeatureSpec", "NORM_MODES", "NormGroup", "OBS_TYPES", "ShapeMeta", "Source", "plain"]

OBS_TYPES = ("rgb", "low_dim")
NORM_MODES = ("limits", "gaussian", "image", "identity")
_SOURCE = re.compile(r"^\s*([A-Za-z_][\w/.-]*)\s*(?:\[\s*(-?\d*)\s*:\s*(-?\d*)\s*\])?\s*$")


def plain(value: Any) -> Any:
    """A plain copy of nested mappings / sequences (OmegaConf containers included; tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Source:
    """A store key, optionally sliced along its flattened feature axis: ``state[:2]`` -> ("state", None, 2)."""

    key: str
    start: int | None = None
    stop: int | None = None

    @classmethod
    def parse(cls, text: str, *, where: str = "source") -> "Source":
        """Parse ``key`` or ``key[a:b]``."""
        match = _SOURCE.match(str(text))
        if not match:
            raise ValueError(f"{where}: {text!r} is not a store key or a slice like 'state[:2]'")
        key, start, stop = match.groups()
        return cls(key, int(start) if start else None, int(stop) if stop else None)

    @property
    def sliced(self) -> bool:
        return self.start is not None or self.stop is not None

    def __str__(self) -> str:
        if not self.sliced:
            return self.key
        return f"{self.key}[{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}]"

    def take(self, array: np.ndarray, lead: int) -> np.ndarray:
        """``array`` with its dims after the first ``lead`` flattened, then sliced."""
        flat = np.asarray(array).reshape(*np.shape(array)[:lead], -1)
        return flat[..., self.start : self.stop] if self.sliced else flat


@dataclass(frozen=True)
class NormGroup:
    """``dims`` consecutive feature dimensions normalised with ``mode``."""

    dims: int
    mode: str


@dataclass(frozen=True)
class FeatureSpec:
    """One declared observation key (or the action)."""

    name: str
    shape: tuple[int, ...]
    type: str
    source: Source
    norm: tuple[NormGroup, ...]

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def norm_mode(self) -> str | list[tuple[int, str]]:
        """One mode, or ``[(dims, mode), ...]`` for a per-dimension grouping (what the normaliser takes)."""
        if len(self.norm) == 1:
            return self.norm[0].mode
        return [(g.dims, g.mode) for g in self.norm]

    def extract(self, stored: np.ndarray, lead: int = 1) -> np.ndarray:
        """Stored values with ``lead`` leading (batch / time) axes -> policy values, float32.

        rgb: uint8 (..., H, W, C) (or already (..., C, H, W)) -> (..., C, H, W) in [0, 1].
        low_dim: the source slice of the flattened feature axis, reshaped to ``shape``.
        """
        array = np.asarray(stored)
        lead_shape = array.shape[:lead]
        if self.type == "rgb":
            c, h, w = self.shape
            if array.shape[lead:] == (h, w, c):
                array = np.moveaxis(array, -1, -3)
            elif array.shape[lead:] != (c, h, w):
                raise ValueError(
                    f"obs {self.name!r} (source {self.source}): stored images are {array.shape[lead:]}, "
                    f"expected (H, W, C) = {(h, w, c)} as shape_meta declares {list(self.shape)}"
                )
            out = np.ascontiguousarray(array, dtype=np.float32)
            if np.asarray(stored).dtype == np.uint8:
                out /= np.float32(255.0)
            return out
        values = self.source.take(array, lead)
        if values.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name!r}: source {self.source} gives {values.shape[-1]} values per step "
                f"(stored shape {array.shape[lead:]}), but shape_meta declares shape {list(self.shape)}"
            )
        return np.ascontiguousarray(values.reshape(*lead_shape, *self.shape), dtype=np.float32)


def _norm_groups(name: str, norm: Any, dim: int, default: str) -> tuple[NormGroup, ...]:
    where = f"shape_meta {name!r} norm"
    if norm is None:
        norm = default
    if isinstance(norm, str):
        groups = [NormGroup(dim, norm)]
    elif isinstance(norm, Sequence):
        groups = []
        for item in norm:
            if not isinstance(item, Mapping) or set(item) - {"dims", "mode"} or "dims" not in item or "mode" not in item:
                raise ValueError(f"{where}: each group must be {{dims: int, mode: str}}, got {plain(item)!r}")
            groups.append(NormGroup(int(item["dims"]), str(item["mode"])))
        if sum(g.dims for g in groups) != dim:
            raise ValueError(f"{where}: groups cover {sum(g.dims for g in groups)} dimensions, the shape has {dim}")
    else:
        raise ValueError(f"{where}: expected a mode or a list of {{dims, mode}} groups, got {plain(norm)!r}")
    for g in groups:
        if g.mode not in NORM_MODES:
            raise ValueError(f"{where}: mode must be one of {NORM_MODES}, got {g.mode!r}")
        if g.dims < 1:
            raise ValueError(f"{where}: group dims must be >= 1, got {g.dims}")
    return tuple(groups)


def _feature(name: str, meta: Any, *, is_action: bool = False) -> FeatureSpec:
    where = "shape_meta action" if is_action else f"shape_meta obs {name!r}"
    if not isinstance(meta, Mapping) or "shape" not in meta:
        raise ValueError(f"{where}: expected a mapping with at least 'shape', got {plain(meta)!r}")
    unknown = set(meta) - {"shape", "type", "source", "norm"}
    if unknown:
        raise ValueError(f"{where}: unknown entries {sorted(unknown)} (expected shape, type, source, norm)")
    try:
        shape = tuple(int(s) for s in meta["shape"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: shape must be a list of ints, got {plain(meta['shape'])!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"{where}: shape must be a non-empty list of positive ints, got {list(shape)}")
    kind = str(meta.get("type", "low_dim"))
    if kind not in OBS_TYPES or (is_action and kind != "low_dim"):
        raise ValueError(f"{where}: type must be one of {OBS_TYPES if not is_action else ('low_dim',)}, got {kind!r}")
    if kind == "rgb" and len(shape) != 3:
        raise ValueError(f"{where}: rgb shape must be [C, H, W], got {list(shape)}")
    if is_action and len(shape) != 1:
        raise ValueError(f"{where}: shape must be [action_dim], got {list(shape)}")
    source = Source.parse(meta.get("source") or name, where=f"{where} source")
    if kind == "rgb" and source.sliced:
        raise ValueError(f"{where}: an rgb source cannot be sliced, got {source}")
    norm = _norm_groups(name, meta.get("norm"), int(np.prod(shape)), "image" if kind == "rgb" else "limits")
    if kind == "rgb" and len(norm) != 1:
        raise ValueError(f"{where}: an rgb key takes one norm mode")
    return FeatureSpec(name, shape, kind, source, norm)


class ShapeMeta:
    """The parsed contract: ``obs`` (name -> FeatureSpec, in declaration order) and ``action``."""

    def __init__(self, shape_meta: Mapping[str, Any] | "ShapeMeta") -> None:
        if isinstance(shape_meta, ShapeMeta):
            shape_meta = shape_meta.raw
        raw = plain(shape_meta)
        if not isinstance(raw, dict) or "obs" not in raw or "action" not in raw:
            got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise ValueError(f"shape_meta needs 'obs' and 'action' entries, got {got}")
        if not isinstance(raw["obs"], dict) or not raw["obs"]:
            raise ValueError("shape_meta obs must declare at least one key")
        self.raw: dict[str, Any] = raw
        self.obs: dict[str, FeatureSpec] = {k: _feature(k, v) for k, v in raw["obs"].items()}
        self.action: FeatureSpec = _feature("action", raw["action"], is_action=True)

    @property
    def rgb_keys(self) -> list[str]:
        return [k for k, f in self.obs.items() if f.type == "rgb"]

    @property
    def low_dim_keys(self) -> list[str]:
        return [k for k, f in self.obs.items() if f.type == "low_dim"]

    @property
    def action_dim(self) -> int:
        return self.action.shape[0]

    def obs_store_keys(self) -> list[str]:
        """Store keys the observations read, in first-use order."""
        return list(dict.fromkeys(f.source.key for f in self.obs.values()))

    def store_keys(self) -> list[str]:
        """Every store key the task reads (observations, then the action)."""
        return list(dict.fromkeys([*self.obs_store_keys(), self.action.source.key]))

    def extract_obs(self, stored: Mapping[str, np.ndarray], lead: int = 1) -> dict[str, np.ndarray]:
        """Store-keyed arrays (``lead`` leading axes) -> policy observations by key (see ``FeatureSpec.extract``)."""
        missing = [k for k in self.obs_store_keys() if k not in stored]
        if missing:
            raise KeyError(f"store keys {missing} are missing; shape_meta reads {self.obs_store_keys()}, got {sorted(stored)}")
        return {name: spec.extract(stored[spec.source.key], lead) for name, spec in self.obs.items()}

    def extract_action(self, stored: Mapping[str, np.ndarray], lead: int = 1) -> np.ndarray:
        """Store-keyed arrays -> the policy's action (float32, last axis ``action_dim``)."""
        if self.action.source.key not in stored:
            raise KeyError(f"store key {self.action.source.key!r} (the action) is missing; got {sorted(stored)}")
        return self.action.extract(stored[self.action.source.key], lead)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShapeMeta) and self.raw == other.raw

    def __repr__(self) -> str:
        obs = ", ".join(f"{k}: {f.type} {list(f.shape)} <- {f.source}" for k, f in self.obs.items())
        return f"ShapeMeta(obs={{{obs}}}, action={list(self.action.shape)} <- {self.action.source})"
