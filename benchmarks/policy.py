"""Training throughput and inference latency of PushT image policies, each arm a set of train.py overrides.

    python benchmarks/policy.py                                  # the named recipes below
    python benchmarks/policy.py --arms default resnet18_gn --train-steps 5
    python benchmarks/policy.py --arm "tiny4: encoder=vit_fib_tiny +encoder.depth=4"

    python benchmarks/policy.py --device cuda --samplers ddim10 ddim16 ddpm100 --paths eager bf16 bf16+graph \
        --latency-batches 1 56 --json policy.json                # the GPU table

An arm is composed exactly as ``python train.py <overrides>`` would compose it: the policy is built from
the config, trained on synthetic batches of the recipe's batch size (or ``--batch-size``) with the
recipe's precision (``auto``: bf16 autocast where the hardware has native bf16), with AdamW. Reported:
parameters, training samples/s of full optimiser steps, and the latency of one action-chunk prediction
(the encoder included) at batch 1 (acting) and at the evaluation batch (all envs of one round), or at
``--latency-batches``. ``--samplers`` (default: the recipe's) names samplers as ``ddim16`` / ``ddpm100``;
``--paths`` the inference paths: ``eager`` (``predict_action``: diffusers' loop under the recipe's
precision), ``fp32`` / ``bf16`` (the ``FastSampler`` coefficient loop with fp32 or bf16 weights) and
``fp32+graph`` / ``bf16+graph`` (the same captured as one CUDA graph per batch size; CUDA only).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fibpolicy.atomic import write_json  # noqa: E402
from fibpolicy.device import use_bf16  # noqa: E402
from fibpolicy.policy import FastSampler, LinearNormalizer  # noqa: E402
from fibpolicy.shape_meta import ShapeMeta  # noqa: E402

from budget import Budget  # noqa: E402  (benchmarks/, the script's own directory)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
ARMS: dict[str, list[str]] = {
    "default": [],
    "fib_paper": ["experiment=fib_paper_pusht_image"],
    "dense": ["encoder=vit_dense_cpu"],
    "resnet18_gn": ["encoder=resnet18_gn"],
}


def compose_arm(overrides: list[str]):
    """The train.py config of ``overrides``."""
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        return compose("train", overrides)


def build_policy(cfg, device: torch.device):
    """The config's policy with a normaliser fitted on plausible ranges."""
    policy = instantiate(cfg.policy)
    meta = ShapeMeta(OmegaConf.to_container(cfg.task.shape_meta, resolve=True))
    data = {k: torch.rand(1000, *meta.obs[k].shape) * 500 for k in meta.low_dim_keys}
    data["action"] = torch.rand(1000, meta.action_dim) * 500
    normalizer = LinearNormalizer().fit(data)
    for key in meta.rgb_keys:
        normalizer.set_image_range(key)
    policy.set_normalizer(normalizer)
    return policy.to(device), meta


def synthetic_batch(meta: ShapeMeta, policy, batch: int, device: torch.device) -> dict:
    """Random observations and actions in env units."""
    steps = policy.n_obs_steps
    obs = {k: torch.rand(batch, steps, *meta.obs[k].shape, device=device) for k in meta.rgb_keys}
    obs.update({k: torch.rand(batch, steps, *meta.obs[k].shape, device=device) * 500 for k in meta.low_dim_keys})
    return {"obs": obs, "action": torch.rand(batch, policy.horizon, meta.action_dim, device=device) * 500}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(policy, batch: dict, steps: int, bf16: bool, device: torch.device) -> float:
    """Samples per second of full optimiser steps."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = policy.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up (allocator, optimiser state)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return next(iter(batch["obs"].values())).shape[0] * steps / (time.perf_counter() - start)


PATHS = ("eager", "fp32", "bf16", "fp32+graph", "bf16+graph")


@torch.no_grad()
def latency_ms(predict, obs: dict, repeats: int, bf16: bool, device: torch.device) -> float:
    """Median milliseconds of one ``predict(obs, generator=...)`` call, after one warm-up call."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        predict(obs, generator=0)
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            predict(obs, generator=0)
            _sync(device)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def parse_sampler(text: str) -> tuple[str, int]:
    """``"ddim16"`` -> ("ddim", 16)."""
    match = re.fullmatch(r"(ddim|ddpm)(\d+)", text)
    if not match:
        raise SystemExit(f"--samplers {text!r}: expected ddimN or ddpmN, e.g. ddim16, ddpm100")
    return match.group(1), int(match.group(2))


def predictor(policy, path: str, recipe_bf16: bool):
    """(predict function, whether to run it under bf16 autocast) for an inference path."""
    if path == "eager":
        return policy.predict_action, recipe_bf16
    weights, _, graph = path.partition("+")
    return FastSampler(policy, weights=weights, cuda_graph=bool(graph)), False


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``"name: override override ..."`` -> (name, overrides)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--arm {text!r}: expected 'name: override override ...'")
    return name.strip(), rest.split()


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="*", default=None, choices=sorted(ARMS), help="named arms (default: all)")
    parser.add_argument("--arm", action="append", default=[], help="extra arm: 'name: override override ...'")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed optimiser steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="*", default=None, help="e.g. ddim10 ddim16 ddpm100 (default: the recipe's)")
    parser.add_argument("--paths", nargs="*", default=["eager"], choices=PATHS, help="inference paths (default: eager)")
    parser.add_argument("--latency-batches", nargs="*", type=int, default=None,
                        help="prediction batch sizes (default: 1 and the evaluation batch)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop adding rows after this budget")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and any(p.endswith("+graph") for p in args.paths):
        raise SystemExit(f"--paths {' '.join(args.paths)}: CUDA graphs need --device cuda (got {device})")
    samplers = [parse_sampler(t) for t in args.samplers] if args.samplers else None
    steps = args.train_steps or (20 if device.type == "cuda" else 3)
    arms = [(name, ARMS[name]) for name in (args.arms if args.arms is not None else ([] if args.arm else list(ARMS)))]
    arms += [parse_arm(text) for text in args.arm]
    budget = Budget(args.max_seconds)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {device} ({gpu}), {torch.get_num_threads()} threads, {steps} timed steps", flush=True)
    train_rows, latency_rows = [], []
    for name, overrides in arms:
        if budget.spent():
            budget.skip(name)
            continue
        cfg = compose_arm(overrides)
        torch.manual_seed(0)
        policy, meta = build_policy(cfg, device)
        trainer, evaluator = cfg.training.trainer, cfg.task.evaluator
        bf16 = use_bf16(trainer.precision, device)
        batch_size = args.batch_size or int(trainer.batch_size)
        eval_batch = min(int(evaluator.n_envs), int(evaluator.n_train) + int(evaluator.n_test))
        row = {
            "arm": name, "overrides": " ".join(overrides) or "(none)",
            "params_M": sum(p.numel() for p in policy.parameters()) / 1e6,
            "encoder_M": sum(p.numel() for p in policy.obs_encoder.parameters()) / 1e6,
            "batch": batch_size, "bf16": bf16, "device": gpu,
            "recipe_sampler": f"{policy.inference_scheduler_name}{policy.num_inference_steps}",
        }
        row["train_samples_s"] = train_throughput(policy, synthetic_batch(meta, policy, batch_size, device), steps, bf16, device)
        train_rows.append(row)
        print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        policy.eval()
        batches = args.latency_batches or [1, eval_batch]
        obs_by_batch = {b: synthetic_batch(meta, policy, b, device)["obs"] for b in batches}
        for sampler_name, sampler_steps in samplers or [(policy.inference_scheduler_name, policy.num_inference_steps)]:
            policy.set_inference(sampler_name, sampler_steps)
            for path in args.paths:
                if budget.spent():
                    budget.skip(f"{name} {sampler_name}{sampler_steps} {path}")
                    continue
                predict, autocast = predictor(policy, path, bf16)
                cell = {"arm": name, "sampler": f"{sampler_name}{sampler_steps}", "path": path, "device": gpu}
                for b in batches:
                    cell[f"ms_b{b}"] = latency_ms(predict, obs_by_batch[b], args.repeats, autocast, device)
                if isinstance(predict, FastSampler) and predict.cuda_graph:
                    cell["graph_scope"] = ", ".join(sorted(set(predict.graph_scope.values())))
                latency_rows.append(cell)
                print("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in cell.items()), flush=True)
                del predict
        del policy
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print("| arm | overrides | params (M) | encoder (M) | batch | bf16 | train samples/s | device |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for r in train_rows:
        print(f"| {r['arm']} | `{r['overrides']}` | {r['params_M']:.1f} | {r['encoder_M']:.2f} | {r['batch']} | "
              f"{'yes' if r['bf16'] else 'no'} | {r['train_samples_s']:.1f} | {r['device']} |")
    if latency_rows:
        keys = sorted({k for r in latency_rows for k in r if k.startswith("ms_b")}, key=lambda k: int(k[4:]))
        print()
        print("| arm | sampler | path | " + " | ".join(f"predict ms (B={k[4:]})" for k in keys) + " |")
        print("|---|---|---|" + "---:|" * len(keys))
        for r in latency_rows:
            path = r["path"] + (f" ({r['graph_scope']})" if r.get("graph_scope") else "")
            print(f"| {r['arm']} | {r['sampler']} | {path} | " + " | ".join(f"{r[k]:.1f}" if k in r else "-" for k in keys) + " |")
    if budget.skipped:
        print(f"\n{budget.summary()}")
    if args.json is not None:
        write_json(args.json, {"train": train_rows, "latency": latency_rows, "skipped": budget.skipped,
                               "torch": torch.__version__, "device": gpu})


if __name__ == "__main__":
    main()
