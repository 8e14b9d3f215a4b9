"""What ``eval.py`` runs: read a checkpoint's config once and score it the way its kind of task is scored."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from .checkpoint import load_config, resolve_checkpoint

TASK_KINDS = ("policy", "classification")


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` (a run or checkpoint directory) and print a one-line summary."""
    path = resolve_checkpoint(cfg.checkpoint)
    ckpt_cfg = load_config(path)
    kind = str(ckpt_cfg.task.get("kind", "policy")) if "task" in ckpt_cfg else None
    if kind == "policy":
        from .rollout.evaluate import evaluate_checkpoint

        record = evaluate_checkpoint(
            path, config=ckpt_cfg, output_dir=cfg.output_dir, n_test=cfg.n_test, n_train=cfg.n_train,
            n_envs=cfg.n_envs, max_steps=cfg.get("max_steps"), inference_steps=cfg.inference_steps, scheduler=cfg.scheduler, device=cfg.device,
            videos=cfg.get("videos"), fast_inference=cfg.get("fast_inference"),
        )
        print(
            f"[fibpolicy] eval {record['checkpoint']}: mean_score={record['mean_score']:.3f} "
            f"success_rate={record['success_rate']:.3f} over {record['n_episodes']} test episodes "
            f"({record['inference']['scheduler']} {record['inference']['steps']} steps, {record['protocol']['max_steps']} env steps, "
            f"{record['seconds']:.1f} s on {record['inference']['device']}) "
            f"-> {cfg.output_dir}/eval.json"
        )
        return record
    if kind == "classification":
        from .training.classification_task import evaluate_classifier

        record = evaluate_classifier(
            path, config=ckpt_cfg, output_dir=cfg.output_dir, device=cfg.device, batch_size=cfg.batch_size,
            num_clips=cfg.num_clips, num_workers=int(cfg.num_workers or 0),
        )
        print(
            f"[fibpolicy] eval {record['checkpoint']}: top1={record['top1']:.2f}% top5={record['top5']:.2f}% "
            f"loss={record['loss']:.4f} over {record['n_samples']} test samples ({record['task']}) "
            f"-> {cfg.output_dir}/eval.json, confusion_matrix.png"
        )
        return record
    raise ValueError(f"{path}/config.yaml: task.kind={kind!r} is not a known kind of task (expected one of {TASK_KINDS})")
