"""Training a diffusion policy: the task's data preparation, the policy, its dataset and normaliser, rollouts."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from .run import prepare_data
from .task_setup import fit, make_trainer, start_run


def train_policy(cfg: DictConfig) -> dict[str, Any]:
    """Build everything a policy run needs from the composed config and train it."""
    with start_run(cfg):
        prepare_data(cfg)
        policy = instantiate(cfg.policy, _convert_="all")
        # The policy owns its time window: the dataset's windows and padding follow from it.
        dataset = instantiate(
            cfg.task.dataset, horizon=policy.horizon, n_obs_steps=policy.n_obs_steps,
            n_action_steps=policy.n_action_steps, _convert_="all",
        )
        policy.set_normalizer(dataset.get_normalizer())
        evaluator = instantiate(cfg.task.evaluator, _convert_="all") if cfg.task.get("evaluator") else None
        trainer = make_trainer(
            cfg, model=policy, train_dataset=dataset, val_dataset=dataset.get_validation_dataset(), evaluator=evaluator
        )
        return fit(trainer, cfg)
