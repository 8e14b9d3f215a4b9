"""Exponential moving average of a model's weights with the Diffusion Policy warm-up schedule.

decay(k) = clamp(1 - (1 + s / inv_gamma) ** -power, min_value, max_value) with s = max(0, k - update_after_step - 1)
and decay = 0 when s == 0, where k counts the ``step`` calls made before this one (0 for the first). With the
reference settings (inv_gamma 1, power 0.75, max 0.9999) the first two updates copy the weights, the third uses
1 - 2^-0.75 = 0.405, and 0.9999 is reached after ~215 k steps.

Why not ``diffusers.training_utils.EMAModel``: its formula is the same, but it increments its step counter
before computing the decay, so its schedule runs one step ahead of the reference (its decay on call n is the
reference's on call n + 1), and it keeps a list of shadow tensors rather than a ready-to-use model copy.

Parameters that do not require grad, parameters of BatchNorm layers, and all buffers (the normaliser lives in
buffers) are copied, not averaged, as in the reference.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["EMAModel"]


class EMAModel:
    """Holds ``averaged_model`` (a deep copy of ``model`` in eval mode, no grads); ``step(model)`` updates it."""

    def __init__(
        self,
        model: nn.Module,
        update_after_step: int = 0,
        inv_gamma: float = 1.0,
        power: float = 0.75,
        min_value: float = 0.0,
        max_value: float = 0.9999,
    ) -> None:
        self.averaged_model = copy.deepcopy(model)
        self.averaged_model.eval()
        self.averaged_model.requires_grad_(False)
        self.update_after_step = int(update_after_step)
        self.inv_gamma = float(inv_gamma)
        self.power = float(power)
        self.min_value = float(min_value)
        self.max_value = float(max_value)
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, optimization_step: int) -> float:
        """Decay used by the update made when ``optimization_step`` updates have already been made."""
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        value = 1.0 - (1.0 + step / self.inv_gamma) ** -self.power
        return max(self.min_value, min(value, self.max_value))

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """``averaged = decay * averaged + (1 - decay) * model`` for trainable parameters; copy everything else."""
        self.decay = self.get_decay(self.optimization_step)
        target_params = dict(self.averaged_model.named_parameters())
        bn_params = {
            f"{name}.{p_name}" if name else p_name
            for name, module in model.named_modules() if isinstance(module, _BatchNorm)
            for p_name, _ in module.named_parameters(recurse=False)
        }
        averaged, sources = [], []
        for name, param in model.named_parameters():
            if name not in target_params:
                raise KeyError(f"EMA model has no parameter {name!r}; was the model's structure changed after creating the EMA?")
            target = target_params[name]
            if not param.requires_grad or name in bn_params:
                target.copy_(param.detach())
            else:
                averaged.append(target)
                sources.append(param.detach().to(target.dtype))
        if averaged:
            torch._foreach_mul_(averaged, self.decay)
            torch._foreach_add_(averaged, sources, alpha=1.0 - self.decay)
        self._copy_buffers(model)
        self.optimization_step += 1

    def _copy_buffers(self, model: nn.Module) -> None:
        source = dict(model.named_buffers())
        target = dict(self.averaged_model.named_buffers())
        if source.keys() == target.keys() and all(source[k].shape == target[k].shape for k in source):
            for key, value in source.items():
                target[key].copy_(value)
        else:  # e.g. the normaliser was fitted after the EMA copy was made: load (and rebuild) through state_dict
            state = {k: v for k, v in model.state_dict().items() if k in source}
            self.averaged_model.load_state_dict(state, strict=False)

    def state_dict(self, include_weights: bool = False) -> dict[str, Any]:
        """Schedule position (and, with ``include_weights``, the averaged weights).

        The trainer saves the averaged weights as ``ema.safetensors`` next to this state, so by default
        they are not duplicated here.
        """
        state = {
            "optimization_step": self.optimization_step,
            "decay": self.decay,
            "update_after_step": self.update_after_step,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
            "min_value": self.min_value,
            "max_value": self.max_value,
        }
        if include_weights:
            state["averaged_model"] = self.averaged_model.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote (weights too, when they were included)."""
        if "averaged_model" in state:
            self.averaged_model.load_state_dict(state["averaged_model"])
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
        for key in ("update_after_step", "inv_gamma", "power", "min_value", "max_value"):
            if key in state:
                setattr(self, key, type(getattr(self, key))(state[key]))
