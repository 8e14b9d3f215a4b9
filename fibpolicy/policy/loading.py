"""Load a trained policy from a checkpoint directory, without Hydra or the training code."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..checkpoint import EMA_FILE, load_config, load_weights, resolve_checkpoint


def load_policy(checkpoint_dir: str | Path, device: str | torch.device | None = None, *, ema: bool | None = None) -> nn.Module:
    """The policy of a checkpoint (EMA weights when present), in eval mode, ready for ``predict_action``.

    ``checkpoint_dir`` is a directory written by the trainer (``.../checkpoints/latest`` or a top-k one),
    or a run directory, in which case its ``latest`` checkpoint is used.
    """
    path = resolve_checkpoint(checkpoint_dir)
    cfg = load_config(path)
    if "policy" not in cfg:
        raise ValueError(f"{path}/config.yaml has no 'policy' entry: not a policy checkpoint")
    policy_cfg = OmegaConf.to_container(cfg.policy, resolve=True)
    policy = instantiate(policy_cfg, _convert_="all")
    use_ema = (path / EMA_FILE).is_file() if ema is None else ema
    load_weights(policy, path, ema=use_ema)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return policy.to(device).eval()
