"""What the entry points run: dispatch a composed config to its kind of task."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train the task ``cfg.task`` describes."""
    kind = cfg.task.get("kind", "policy")
    if kind == "policy":
        from .policy_task import train_policy

        return train_policy(cfg)
    raise ValueError(f"task.kind={kind!r} is not a known kind of task (expected 'policy')")


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` and print a one-line summary."""
    from ..rollout.evaluate import evaluate_checkpoint

    record = evaluate_checkpoint(
        cfg.checkpoint, output_dir=cfg.output_dir, n_test=cfg.n_test, n_train=cfg.n_train, n_envs=cfg.n_envs,
        inference_steps=cfg.inference_steps, scheduler=cfg.scheduler, device=cfg.device,
    )
    print(
        f"[fibpolicy] eval {record['checkpoint']}: mean_score={record['mean_score']:.3f} "
        f"success_rate={record['success_rate']:.3f} over {record['n_episodes']} test episodes "
        f"({record['inference']['scheduler']} {record['inference']['steps']} steps) -> {cfg.output_dir}/eval.json"
    )
    return record
