"""The one training loop shared by policies and classifiers, and its parts."""

from ..checkpoint import (
    TopKCheckpoints,
    load_config,
    load_trainer_state,
    load_weights,
    read_meta,
    save_checkpoint,
)
from .distributed import DistInfo, init_distributed
from .ema import EMAModel
from .logger import MetricsLogger
from .sampler import ResumableSampler
from .seeding import rng_state, seed_everything, set_rng_state
from .optim import adamw
from .trainer import Trainer, to_device

__all__ = [
    "DistInfo",
    "EMAModel",
    "MetricsLogger",
    "ResumableSampler",
    "TopKCheckpoints",
    "Trainer",
    "adamw",
    "init_distributed",
    "load_config",
    "load_trainer_state",
    "load_weights",
    "read_meta",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "to_device",
]
