"""What ``train.py`` and ``prepare.py`` run: dispatch a composed config to its kind of task."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

TASK_KINDS = ("policy", "classification")


def prepare_data(cfg: DictConfig) -> Any:
    """Run the task's own data preparation (``task.prepare``, e.g. recording expert demonstrations), if any."""
    prepare = cfg.task.get("prepare")
    if prepare is None:
        return None
    return instantiate(prepare, _convert_="all")


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train the task ``cfg.task`` describes."""
    kind = cfg.task.get("kind")
    if kind == "policy":
        from .policy_task import train_policy

        return train_policy(cfg)
    if kind == "classification":
        from .classification_task import train_classifier

        return train_classifier(cfg)
    raise ValueError(f"task.kind={kind!r} is not a known kind of task (expected one of {TASK_KINDS})")
