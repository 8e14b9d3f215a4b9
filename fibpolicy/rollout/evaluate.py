"""Score a saved policy checkpoint with its task's rollout protocol and write ``eval.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..atomic import write_json
from ..checkpoint import load_config, resolve_checkpoint
from ..policy.loading import load_policy


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    output_dir: str | Path,
    config: DictConfig | None = None,
    n_test: int | None = None,
    n_train: int | None = None,
    n_envs: int | None = None,
    inference_steps: int | None = None,
    scheduler: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Roll out the checkpoint's policy (EMA weights) and write ``output_dir/eval.json``; returns the record.

    ``config``: the checkpoint's config when the caller has already read it.
    """
    path = resolve_checkpoint(checkpoint)
    cfg = load_config(path) if config is None else config
    if cfg.task.get("evaluator") is None:
        raise ValueError(f"{path}/config.yaml: task {cfg.task.get('name')!r} declares no task.evaluator to score it with")
    policy = load_policy(path, device=device, config=cfg)
    evaluator_cfg = OmegaConf.to_container(cfg.task.evaluator, resolve=True)
    for key, value in (("n_test", n_test), ("n_train", n_train), ("n_envs", n_envs)):
        if value is not None:
            evaluator_cfg[key] = value
    if inference_steps is not None or scheduler is not None:
        policy.set_inference(scheduler or policy.inference_scheduler_name, inference_steps or policy.num_inference_steps)
    evaluator = instantiate(evaluator_cfg, _convert_="all")
    output_dir = Path(output_dir)
    result = evaluator.run(policy, output_dir / "videos")
    test = [e for e in result["episodes"] if e["prefix"] == "test"]
    record = {
        "checkpoint": str(path.resolve()),
        "mean_score": result.get("test/mean_score"),
        "success_rate": result.get("test/success_rate"),
        "n_episodes": len(test),
        "inference": {"scheduler": policy.inference_scheduler_name, "steps": policy.num_inference_steps},
        **result,
    }
    write_json(output_dir / "eval.json", record)
    return record
