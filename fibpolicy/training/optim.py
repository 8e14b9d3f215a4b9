"""Optimiser factories that take a model, so configs can name them with ``_partial_: true``."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def adamw(model: nn.Module, lr: float = 1e-4, betas: Sequence[float] = (0.95, 0.999), weight_decay: float = 1e-6) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (the Diffusion Policy recipe's defaults)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=tuple(betas), weight_decay=weight_decay)
