"""Score a saved policy checkpoint with the task's rollout protocol and write ``eval.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from ..policy.loading import load_policy
from ..checkpoint import load_config, resolve_checkpoint


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    output_dir: str | Path,
    n_test: int | None = None,
    n_train: int | None = None,
    n_envs: int | None = None,
    inference_steps: int | None = None,
    scheduler: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Roll out the checkpoint's policy (EMA weights) and write ``output_dir/eval.json``; returns the record."""
    path = resolve_checkpoint(checkpoint)
    policy = load_policy(path, device=device)
    evaluator_cfg = OmegaConf.to_container(load_config(path).task.evaluator, resolve=True)
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
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(output_dir / "eval.json")
    return record
