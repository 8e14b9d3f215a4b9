"""What the entry points run: dispatch a composed config to its kind of task."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

TASK_KINDS = ("policy", "classification")


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train the task ``cfg.task`` describes."""
    kind = cfg.task.get("kind", "policy")
    if kind == "policy":
        from .policy_task import train_policy

        return train_policy(cfg)
    if kind == "classification":
        from .classification_task import train_classifier

        return train_classifier(cfg)
    raise ValueError(f"task.kind={kind!r} is not a known kind of task (expected one of {TASK_KINDS})")


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` (its kind of task is read from its config) and print a one-line summary."""
    from ..checkpoint import checkpoint_task_kind

    kind = checkpoint_task_kind(cfg.checkpoint)
    if kind == "classification":
        return _evaluate_classifier(cfg)
    if kind != "policy":
        raise ValueError(f"{cfg.checkpoint}: task.kind={kind!r} is not a known kind of task (expected one of {TASK_KINDS})")
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


def _evaluate_classifier(cfg: DictConfig) -> dict[str, Any]:
    from .classification_task import evaluate_classifier

    # batch_size / num_clips / num_workers are not in eval.yaml's schema: pass them as +key=value.
    record = evaluate_classifier(
        cfg.checkpoint, output_dir=cfg.output_dir, device=cfg.device, batch_size=cfg.get("batch_size"),
        num_clips=cfg.get("num_clips"), num_workers=int(cfg.get("num_workers") or 0),
    )
    print(
        f"[fibpolicy] eval {record['checkpoint']}: top1={record['top1']:.2f}% top5={record['top5']:.2f}% "
        f"loss={record['loss']:.4f} over {record['n_samples']} test samples ({record['task']}) "
        f"-> {cfg.output_dir}/eval.json, confusion_matrix.png"
    )
    return record
