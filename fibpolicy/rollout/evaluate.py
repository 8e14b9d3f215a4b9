"""Score a saved policy checkpoint with its task's rollout protocol and write ``eval.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..atomic import write_json
from ..checkpoint import load_config, resolve_checkpoint
from ..policy.fast_inference import FAST_WEIGHTS
from ..policy.loading import load_policy


PROTOCOL_KEYS = ("n_train", "n_test", "train_seed_start", "test_seed_start", "max_steps")


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    output_dir: str | Path,
    config: DictConfig | None = None,
    n_test: int | None = None,
    n_train: int | None = None,
    n_envs: int | None = None,
    max_steps: int | None = None,
    inference_steps: int | None = None,
    scheduler: str | None = None,
    device: str | None = None,
    videos: bool | None = None,
    fast_inference: str | None = None,
) -> dict[str, Any]:
    """Roll out the checkpoint's policy (EMA weights) with its task's reference protocol and write
    ``output_dir/eval.json``; returns the record.

    The protocol is ``task.protocol`` of the checkpoint's config (what the task YAML declares, even when
    the run itself evaluated on a shrunk one, e.g. ``training=smoke``); the arguments override it.
    ``config``: the checkpoint's config when the caller has already read it. ``videos=False`` records no
    rollout videos. ``fast_inference``: ``"fp32"`` or ``"bf16"`` samples through the policy's
    ``FastSampler`` with those weights (on CUDA, captured as CUDA graphs).
    """
    path = resolve_checkpoint(checkpoint)
    cfg = load_config(path) if config is None else config
    if cfg.task.get("evaluator") is None:
        raise ValueError(f"{path}/config.yaml: task {cfg.task.get('name')!r} declares no task.evaluator to score it with")
    overrides = {k: v for k, v in (("n_test", n_test), ("n_train", n_train), ("n_envs", n_envs), ("max_steps", max_steps))
                 if v is not None}
    for name, value in overrides.items():
        minimum = 1 if name in ("n_envs", "max_steps") else 0
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"eval: {name}={value!r} is not valid (expected an integer >= {minimum})")
    evaluator_cfg = OmegaConf.to_container(cfg.task.evaluator, resolve=True)
    protocol = OmegaConf.to_container(cfg.task.protocol, resolve=True) if cfg.task.get("protocol") else None
    if protocol is None:
        print(f"[fibpolicy] warning: {path}/config.yaml has no task.protocol; evaluating with the run's own evaluator settings")
    else:
        evaluator_cfg.update({k: v for k, v in protocol.items() if k in PROTOCOL_KEYS})
    evaluator_cfg.update(overrides)
    if videos is not None and not isinstance(videos, bool):
        raise ValueError(f"eval: videos={videos!r} is not valid (expected true or false)")
    if videos is False:
        evaluator_cfg.update(n_train_videos=0, n_test_videos=0)
    if fast_inference is not None and fast_inference not in FAST_WEIGHTS:
        raise ValueError(f"eval: fast_inference={fast_inference!r} is not valid (expected one of {tuple(FAST_WEIGHTS)} or null)")
    policy = load_policy(path, device=device, config=cfg)
    if inference_steps is not None or scheduler is not None:
        # ``is None``, not ``or``: inference_steps=0 must be refused, not replaced by the default.
        policy.set_inference(
            policy.inference_scheduler_name if scheduler is None else scheduler,
            policy.num_inference_steps if inference_steps is None else inference_steps,
        )
    if fast_inference is not None:
        policy.enable_fast_inference(fast_inference)
    evaluator = instantiate(evaluator_cfg, _convert_="all")
    output_dir = Path(output_dir)
    try:
        result = evaluator.run(policy, output_dir / "videos")
    finally:
        close = getattr(evaluator, "close", None)
        if close is not None:  # env workers kept between evaluations (keep_workers)
            close()
    test = [e for e in result["episodes"] if e["prefix"] == "test"]
    record = {
        "checkpoint": str(path.resolve()),
        "mean_score": result.get("test/mean_score"),
        "success_rate": result.get("test/success_rate"),
        "n_episodes": len(test),
        "protocol": {**{k: evaluator_cfg.get(k) for k in (*PROTOCOL_KEYS, "n_envs", "vector_env")}, "seed": evaluator.seed},
        "inference": {"scheduler": policy.inference_scheduler_name, "steps": policy.num_inference_steps,
                      "fast": fast_inference, "device": str(policy.device)},
        **result,
    }
    write_json(output_dir / "eval.json", record)
    return record
