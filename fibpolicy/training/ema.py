"""Exponential moving average of a model's weights with Diffusion Policy's warm-up schedule."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn


class ExponentialMovingAverage:
    """Keeps ``self.model``, an averaged copy of a model: ``ema = d * ema + (1 - d) * weights``.

    The decay follows the reference schedule ``d = 1 - (1 + step / inv_gamma) ** -power``, clipped to
    ``[min_value, max_value]`` (defaults: inverse gamma 1, power 0.75, cap 0.9999), and is 0 for the
    first update so the copy starts from the trained weights. Buffers (normaliser statistics, ...) are
    copied, not averaged. Use GroupNorm, not BatchNorm, in averaged models.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_value: float = 0.0,
        max_value: float = 0.9999,
        update_after_step: int = 0,
    ) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_value, self.max_value, self.update_after_step = min_value, max_value, update_after_step
        self.optimization_step = 0

    def decay(self, optimization_step: int) -> float:
        """Decay used for the update made at ``optimization_step`` (0-based count of earlier updates)."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        d = self.decay(self.optimization_step)
        for avg, new in zip(self.model.parameters(), model.parameters()):
            if new.requires_grad:
                avg.mul_(d).add_(new.detach().to(avg.dtype), alpha=1 - d)
            else:
                avg.copy_(new)
        for avg, new in zip(self.model.buffers(), model.buffers()):
            avg.copy_(new)
        self.optimization_step += 1

    def state_dict(self) -> dict[str, Any]:
        """Bookkeeping (the averaged weights themselves are saved as ``ema.safetensors``)."""
        return {"optimization_step": self.optimization_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bookkeeping written by :meth:`state_dict`."""
        self.optimization_step = int(state["optimization_step"])
