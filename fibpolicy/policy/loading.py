"""Load a trained policy from a checkpoint directory, without Hydra's entry points or the training code."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import has_ema, load_config, load_weights, resolve_checkpoint
from ..device import default_device


def load_policy(
    checkpoint_dir: str | Path,
    device: str | torch.device | None = None,
    *,
    ema: bool | None = None,
    config: DictConfig | None = None,
) -> nn.Module:
    """The policy of a checkpoint (EMA weights when present), in eval mode, ready for ``predict_action``.

    ``checkpoint_dir`` is a directory written by the trainer (``.../checkpoints/latest`` or a top-k one),
    or a run directory, in which case its ``latest`` checkpoint is used. ``config``: the checkpoint's
    config when the caller has already read it.
    """
    path = resolve_checkpoint(checkpoint_dir)
    cfg = load_config(path) if config is None else config
    if "policy" not in cfg:
        raise ValueError(f"{path}/config.yaml has no 'policy' entry: not a policy checkpoint")
    policy = instantiate(OmegaConf.to_container(cfg.policy, resolve=True), _convert_="all")
    use_ema = has_ema(path) if ema is None else ema
    load_weights(policy, path, ema=use_ema)
    return policy.to(default_device(device)).eval()
