"""Training throughput and inference latency of the PushT image diffusion policy, per image encoder.

    python benchmarks/policy.py                          # reference sizes, CPU or the visible GPU
    python benchmarks/policy.py --encoders vit_fib resnet18_gn --batch-size 8 --train-steps 3

For each encoder (Fibottention ViT-B/8, its dense twin, the reference ResNet-18 with GroupNorm) the
policy has the reference U-Net ([512, 1024, 2048]), two observation steps of a 96 x 96 image (84
crop) plus the agent position, horizon 16. Training throughput is samples per second of full
optimiser steps (loss, backward, AdamW) on synthetic batches; latency is the wall time of one
``predict_action`` call (batch 1, one action chunk) with DDIM 10, DDIM 16 and DDPM 100 steps
(median of repeats, after a warm-up). bf16 autocast is used for training on CUDA, as the trainer does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from functools import partial  # noqa: E402

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fibpolicy.encoders import create_feature_encoder, create_resnet18_gn_encoder  # noqa: E402
from fibpolicy.policy import DiffusionUnetPolicy, LinearNormalizer  # noqa: E402

with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "config"), version_base=None):
    PUSHT_IMAGE_SHAPE_META = OmegaConf.to_container(compose("train", ["task=pusht_image"]).task.shape_meta, resolve=True)

ENCODERS = {
    "vit_fib": partial(create_feature_encoder, "vit_fib_base_patch16_224", patch_size=8, pool="mean"),
    "vit_dense": partial(create_feature_encoder, "vit_fib_base_patch16_224", patch_size=8, pool="mean", attention="dense"),
    "resnet18_gn": create_resnet18_gn_encoder,
}
SAMPLERS = (("ddim", 10), ("ddim", 16), ("ddpm", 100))


def build_policy(encoder: str, down_dims: list[int], device: torch.device) -> DiffusionUnetPolicy:
    """A PushT image policy with a normaliser fitted on plausible ranges."""
    policy = DiffusionUnetPolicy(
        PUSHT_IMAGE_SHAPE_META, obs_encoder=dict(crop_shape=84, image_encoder=ENCODERS[encoder]), down_dims=down_dims,
    )
    normalizer = LinearNormalizer().fit({"action": torch.rand(1000, 2) * 500, "agent_pos": torch.rand(1000, 2) * 500})
    normalizer.set_image_range("image")
    policy.set_normalizer(normalizer)
    return policy.to(device)


def synthetic_batch(batch: int, device: torch.device) -> dict:
    """Random observations and actions in env units."""
    return {
        "obs": {"image": torch.rand(batch, 2, 3, 96, 96, device=device), "agent_pos": torch.rand(batch, 2, 2, device=device) * 500},
        "action": torch.rand(batch, 16, 2, device=device) * 500,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(policy, batch_size: int, steps: int, device: torch.device) -> float:
    """Samples per second of full optimiser steps."""
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    batch = synthetic_batch(batch_size, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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
    return batch_size * steps / (time.perf_counter() - start)


@torch.no_grad()
def latency_ms(policy, scheduler: str, steps: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds of one predict_action call (batch 1, one chunk)."""
    policy.eval()
    policy.set_inference(scheduler, steps)
    obs = {k: v for k, v in synthetic_batch(1, device)["obs"].items()}
    policy.predict_action(obs, generator=0)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        policy.predict_action(obs, generator=0)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["vit_fib", "resnet18_gn"], choices=sorted(ENCODERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 64 on CUDA, 8 on CPU)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed optimiser steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--down-dims", type=int, nargs="+", default=[512, 1024, 2048])
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch_size or (64 if device.type == "cuda" else 8)
    steps = args.train_steps or (20 if device.type == "cuda" else 3)

    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; U-Net {args.down_dims}, "
          f"train batch {batch}, {steps} timed steps", flush=True)
    rows = []
    for name in args.encoders:
        torch.manual_seed(0)
        policy = build_policy(name, args.down_dims, device)
        n_enc = sum(p.numel() for p in policy.obs_encoder.parameters())
        n_all = sum(p.numel() for p in policy.parameters())
        row = {"encoder": name, "params_M": n_all / 1e6, "encoder_M": n_enc / 1e6}
        row["train_samples_s"] = train_throughput(policy, batch, steps, device)
        for sched, k in SAMPLERS:
            row[f"{sched}{k}_ms"] = latency_ms(policy, sched, k, args.repeats, device)
        rows.append(row)
        print("  " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        del policy

    print()
    print("| encoder | params (M) | encoder (M) | train samples/s | DDIM 10 ms | DDIM 16 ms | DDPM 100 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['encoder']} | {r['params_M']:.1f} | {r['encoder_M']:.1f} | {r['train_samples_s']:.2f} | "
              f"{r['ddim10_ms']:.0f} | {r['ddim16_ms']:.0f} | {r['ddpm100_ms']:.0f} |")


if __name__ == "__main__":
    main()
