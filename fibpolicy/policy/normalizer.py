"""Per-key affine normaliser ``y = x * scale + offset``, fitted on training data and saved with the policy.

Modes (as in the reference): ``"limits"`` maps the per-dimension min / max of the data to [-1, 1]
(dimensions whose range is below ``range_eps`` get scale 1 and are centred on 0 instead of dividing by ~0);
``"gaussian"`` gives zero mean, unit std; ``"image"`` maps [0, 1] to [-1, 1]; ``"identity"`` leaves values
alone (quaternions, rotation-6d). A key's mode may also be a list of ``(dims, mode)`` groups over
consecutive feature dimensions, e.g. robomimic's absolute action ``[(3, "limits"), (6, "identity"),
(1, "limits")]``. The normaliser is an ``nn.Module`` whose buffers hold everything, so it
travels in the policy's ``state_dict`` (safetensors-friendly) and a fresh, empty ``LinearNormalizer``
rebuilds its keys from a state dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..shape_meta import NORM_MODES

__all__ = ["LinearNormalizer", "NORMALIZER_MODES", "SingleFieldNormalizer"]

NORMALIZER_MODES = NORM_MODES
_STATS = ("scale", "offset", "input_min", "input_max", "input_mean", "input_std")


def _as_2d(data: Any, key: str) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data).detach()
    if x.ndim == 0:
        raise ValueError(f"normalizer key {key!r}: expected an array with a feature axis, got a scalar")
    if x.numel() == 0:
        raise ValueError(f"normalizer key {key!r}: cannot fit on empty data (shape {tuple(x.shape)})")
    return x.reshape(-1, x.shape[-1]).to(torch.float64)


class SingleFieldNormalizer(nn.Module):
    """Affine map for one key; parameters are float32 buffers of shape (D,) (or (1,) for images / scalars)."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor, stats: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1).clone()
        offset = torch.as_tensor(offset, dtype=torch.float32).reshape(-1).clone()
        if scale.shape != offset.shape:
            raise ValueError(f"scale {tuple(scale.shape)} and offset {tuple(offset.shape)} differ in shape")
        if torch.any(scale == 0):
            raise ValueError("normalizer scale must be non-zero")
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)
        stats = dict(stats or {})
        for name in _STATS[2:]:
            value = stats.get(name)
            value = torch.full_like(scale, float("nan")) if value is None else torch.as_tensor(value, dtype=torch.float32).reshape(-1).clone()
            self.register_buffer(name, value)

    @property
    def dim(self) -> int:
        return self.scale.shape[0]

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(x)
        if not torch.is_floating_point(x):
            x = x.to(torch.float32)
        if self.dim != 1 and (x.ndim == 0 or x.shape[-1] != self.dim):
            raise ValueError(f"normalizer expects a last dimension of {self.dim}, got shape {tuple(x.shape)}")
        return x, self.scale.to(device=x.device, dtype=x.dtype), self.offset.to(device=x.device, dtype=x.dtype)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x, scale, offset = self._params(x)
        return x * scale + offset

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        x, scale, offset = self._params(x)
        return (x - offset) / scale

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LinearNormalizer(nn.Module):
    """A dict of ``SingleFieldNormalizer`` by key; ``normalize`` / ``unnormalize`` map a dict of tensors.

    Keys are flat names (``"image"``, ``"agent_pos"``, ``"action"``); a nested batch is normalised as
    ``normalizer.normalize(batch["obs"])`` and ``normalizer["action"].normalize(batch["action"])``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fields = nn.ModuleDict()

    # ----------------------------------------------------------------- fitting
    def fit(
        self,
        data: Mapping[str, Any],
        mode: Any = "limits",
        *,
        output_min: float = -1.0,
        output_max: float = 1.0,
        range_eps: float = 1e-4,
    ) -> "LinearNormalizer":
        """Fit one field per key of ``data`` (arrays whose last axis is the feature axis).

        ``mode`` is one mode for all keys or a dict by key (missing keys: ``"limits"``); a key's mode may
        be a list of ``(dims, mode)`` groups that together cover its last axis.
        """
        for key, value in data.items():
            key_mode = mode if isinstance(mode, (str, list, tuple)) else mode.get(key, "limits")
            if isinstance(key_mode, (list, tuple)):
                self.fields[key] = self._fit_groups(key, value, key_mode, output_min, output_max, range_eps)
            else:
                self.fields[key] = self._fit_field(key, value, key_mode, output_min, output_max, range_eps)
        return self

    @classmethod
    def _fit_groups(cls, key: str, data: Any, groups: Any, output_min: float, output_max: float, range_eps: float) -> SingleFieldNormalizer:
        x = _as_2d(data, key)
        sizes = [int(dims) for dims, _ in groups]
        if sum(sizes) != x.shape[1]:
            raise ValueError(f"normalizer key {key!r}: groups cover {sum(sizes)} dimensions, the data has {x.shape[1]}")
        parts = [
            cls._fit_field(f"{key}[{i}]", chunk, mode, output_min, output_max, range_eps)
            for i, (chunk, (_, mode)) in enumerate(zip(torch.split(x, sizes, dim=1), groups))
        ]
        for (dims, mode), part in zip(groups, parts):
            if mode == "image" and dims != 1:
                raise ValueError(f"normalizer key {key!r}: an 'image' group must be 1 dimension wide, got {dims}")
        stats = {name: torch.cat([getattr(p, name) for p in parts]) for name in _STATS[2:]}
        return SingleFieldNormalizer(torch.cat([p.scale for p in parts]), torch.cat([p.offset for p in parts]), stats)

    @staticmethod
    def _fit_field(key: str, data: Any, mode: str, output_min: float, output_max: float, range_eps: float) -> SingleFieldNormalizer:
        if mode not in NORMALIZER_MODES:
            raise ValueError(f"normalizer key {key!r}: mode must be one of {NORMALIZER_MODES}, got {mode!r}")
        if mode == "image":
            return _image_field()
        x = _as_2d(data, key)
        stats = dict(
            input_min=x.min(0).values, input_max=x.max(0).values, input_mean=x.mean(0),
            input_std=x.std(0, unbiased=False),
        )
        if mode == "identity":
            return SingleFieldNormalizer(torch.ones(x.shape[1]), torch.zeros(x.shape[1]), stats)
        if mode == "limits":
            input_range = stats["input_max"] - stats["input_min"]
            ignore = input_range < range_eps
            input_range = torch.where(ignore, torch.full_like(input_range, output_max - output_min), input_range)
            scale = (output_max - output_min) / input_range
            offset = output_min - scale * stats["input_min"]
            # constant dimensions: scale 1, and the constant value maps to the middle of the output range
            offset = torch.where(ignore, (output_max + output_min) / 2 - stats["input_min"], offset)
        else:  # gaussian
            std = stats["input_std"]
            ignore = std < range_eps
            std = torch.where(ignore, torch.ones_like(std), std)
            scale = 1.0 / std
            offset = -stats["input_mean"] * scale
        return SingleFieldNormalizer(scale, offset, stats)

    def set_image_range(self, key: str) -> None:
        """``key`` holds images in [0, 1]: map them to [-1, 1]."""
        self.fields[key] = _image_field()

    def set_identity(self, key: str, dim: int) -> None:
        """``key`` (last dimension ``dim``) is passed through unchanged."""
        self.fields[key] = SingleFieldNormalizer(torch.ones(dim), torch.zeros(dim))

    # ----------------------------------------------------------------- access
    def keys(self) -> list[str]:
        return list(self.fields.keys())

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def __getitem__(self, key: str) -> SingleFieldNormalizer:
        if key not in self.fields:
            raise KeyError(f"normalizer has no key {key!r}; it has {self.keys()}")
        return self.fields[key]

    def __len__(self) -> int:
        return len(self.fields)

    def normalize(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalise every key of ``data`` (each must have a field)."""
        return {key: self[key].normalize(value) for key, value in data.items()}

    def unnormalize(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: self[key].unnormalize(value) for key, value in data.items()}

    # ----------------------------------------------------------------- loading into an empty normaliser
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        field_prefix = prefix + "fields."
        found: dict[str, dict[str, torch.Tensor]] = {}
        for name, value in state_dict.items():
            if name.startswith(field_prefix):
                key, _, stat = name[len(field_prefix):].rpartition(".")
                if key and stat in _STATS:
                    found.setdefault(key, {})[stat] = value
        if found:  # rebuild the fields from the state dict, so keys and shapes need not be known in advance
            self.fields = nn.ModuleDict()
            for key, stats in found.items():
                if "scale" not in stats or "offset" not in stats:
                    error_msgs.append(f"normalizer key {key!r}: state dict lacks scale/offset")
                    continue
                self.fields[key] = SingleFieldNormalizer(
                    stats["scale"].float(), stats["offset"].float(),
                    {k: v for k, v in stats.items() if k not in ("scale", "offset")},
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {self.fields[k].dim}" for k in self.keys())


def _image_field() -> SingleFieldNormalizer:
    return SingleFieldNormalizer(
        torch.tensor([2.0]), torch.tensor([-1.0]),
        dict(input_min=torch.tensor([0.0]), input_max=torch.tensor([1.0]), input_mean=torch.tensor([0.5]),
             input_std=torch.tensor([np.sqrt(1 / 12)])),
    )

