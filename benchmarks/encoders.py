"""Fibottention against the fixed sparse patterns, dense attention and FCViT, trained identically on CPU.

    python benchmarks/encoders.py                        # every arm on digits and moving shapes (+ CIFAR-10 if present)
    python benchmarks/encoders.py --quick                # every stage of every arm, a few steps each (~2-3 min)
    python benchmarks/encoders.py --tasks digits --arms fib longformer fcvit
    python benchmarks/encoders.py --cifar-root /data/cifar-10-batches-py --tasks cifar10

Arms (``config/encoder/*.yaml``; ViT-Ti width, patch from the task): ``fib`` (Fibottention, the release's
multiplicative mode), ``dense`` (its dense twin), ``longformer`` (window 1), ``bigbird`` (band 1 + one
random key per query, redrawn every call), ``window2d`` (3 x 3 neighbourhoods, zero-padded) - these
three additive with the CLS token global, as the Fibottention authors benchmarked them - and ``fcvit``
(FCViT-tiny, the nearest FCViT to ViT-Ti; image tasks only: it has no video variant).

Every arm of a task runs the task's recipe from ``benchmarks/classification.py`` (``TARGETS``: the same
optimiser, schedule, augmentation, epochs, precision and seed) through ``run_training``, the code
``python train.py`` runs, into ``runs/benchmark_encoders/<task>_<arm>/``. Models are built by the
classification task through ``timm.create_model``. CIFAR-10 (if the extracted python batches are found:
``--cifar-root``, else ``$FIBPOLICY_DATA_DIR/cifar-10-batches-py``) uses the digits recipe with
``--cifar-epochs`` epochs. The table gives final and best test top-1, wall-clock minutes of the whole
run (training + per-epoch tests, the trainer's own clock), trainable parameters and the patch-block
density of block 0's pattern on the task's patch grid. A run directory that already holds an arm's run
is resumed from its checkpoint (``resume=true``, exact) or, if finished, only read back, so the comparison
can span sessions; a run killed before its first checkpoint (these recipes write one at the end) is
started again. One seed per arm: differences of a point or two are within what a second seed could change
(see docs/patterns.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402

from fibpolicy.attention import FibottentionAttention, density  # noqa: E402
from fibpolicy.plot import read_metrics  # noqa: E402
from fibpolicy.training.run import run_training  # noqa: E402
from fibpolicy.training.run_dir import continuation_overrides  # noqa: E402


def _classification_benchmark():
    """benchmarks/classification.py as a module: its TARGETS are the recipes every arm shares."""
    spec = importlib.util.spec_from_file_location("_benchmark_classification", ROOT / "benchmarks" / "classification.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLASSIFICATION = _classification_benchmark()

ARMS: dict[str, str] = {
    "fib": "vit_fib_tiny",
    "dense": "vit_dense_tiny",
    "longformer": "vit_longformer_tiny",
    "bigbird": "vit_bigbird_tiny",
    "window2d": "vit_window2d_tiny",
    "fcvit": "fcvit_tiny",
}
IMAGE_ONLY = {"fcvit"}
TASKS = ("digits", "moving_shapes", "cifar10")
NUM_CLASSES = {"digits": 10, "moving_shapes": 8, "cifar10": 10}
# --quick: each stage of each arm in seconds (a few steps on a small subset; ViTs 2 blocks deep).
QUICK = dict(CLASSIFICATION.SMOKE)
QUICK_NOT_FOR_CNN = ("++task.backbone.depth",)  # a ViT keyword; FCViT's depths are fixed per variant


def cifar_root(explicit: str | None) -> Path | None:
    """The extracted CIFAR-10 directory if its files are there, else None."""
    root = Path(explicit) if explicit else Path(os.environ.get("FIBPOLICY_DATA_DIR", ROOT / "data")) / "cifar-10-batches-py"
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file() and (candidate / "data_batch_1").is_file():
            return candidate
    return None


def task_spec(task: str, cifar_epochs: int, root: Path | None) -> dict:
    """Hydra task name and recipe overrides of a task (CIFAR-10: the digits recipe, shorter, on its files)."""
    if task != "cifar10":
        spec = CLASSIFICATION.TARGETS[task]
        return {"task": spec["task"], "overrides": dict(spec["overrides"])}
    overrides = dict(CLASSIFICATION.TARGETS["digits"]["overrides"])
    for digits_only in ("training.augment.auto_augment", "training.augment.re_prob"):
        overrides.pop(digits_only, None)  # CIFAR keeps the recipe's own augmentation
    overrides.update({
        "training.trainer.num_epochs": cifar_epochs, "training.trainer.checkpoint_every_epochs": cifar_epochs,
        "training.trainer.batch_size": 128, "task.root": str(root),
    })
    return {"task": "cifar10", "overrides": overrides}


def run_overrides(task: str, arm: str, run_dir: Path, spec: dict, extra: dict, quick: bool) -> list[str]:
    """Hydra overrides of one run; later settings replace earlier ones with the same key."""
    quick_settings = {k: v for k, v in QUICK.items() if not (arm in IMAGE_ONLY and k in QUICK_NOT_FOR_CNN)} if quick else {}
    settings = {**spec["overrides"], **quick_settings, **extra}
    fixed = [f"task={spec['task']}", f"encoder={ARMS[arm]}", f"run_dir={run_dir}"]
    return fixed + [f"{key}={value}" for key, value in settings.items()]


def _parameters_and_density(cfg, task: str) -> tuple[int, float | None]:
    """Trainable parameters of the arm's classifier, and block 0's pattern density on the task's grid."""
    from fibpolicy.training.classification_task import build_backbone

    model = build_backbone(cfg, NUM_CLASSES[task])
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return params, None  # a CNN
    attn = blocks[0].attn
    if not isinstance(attn, FibottentionAttention):
        return params, 1.0
    return params, density(attn.pattern, tuple(model.patch_embed.grid_size))


def run_one(task: str, arm: str, out_dir: Path, spec: dict, extra: dict, quick: bool) -> dict:
    """Train one (task, arm) pair and return its table row."""
    run_dir = out_dir / f"{task}_{arm}"
    overrides = run_overrides(task, arm, run_dir, spec, extra, quick)
    overrides += continuation_overrides(run_dir)
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    params, dens = _parameters_and_density(cfg, task)
    print(f"[benchmark] {task} / {arm}: python train.py " + " ".join(o for o in overrides if not o.startswith("run_dir=")),
          flush=True)
    run_training(cfg)
    # The last evaluation in the run's log: the same row whether this call trained, resumed or found it done.
    tested = [row for row in read_metrics(run_dir) if "test/top1" in row]
    if not tested:
        raise RuntimeError(f"{run_dir}/metrics.jsonl has no test/top1 row: the run did not evaluate")
    last = tested[-1]
    return {
        "task": task, "arm": arm, "encoder": ARMS[arm], "top1": last["test/top1"],
        "best_top1": last.get("best/test/top1", float("nan")), "minutes": last["wall_time_s"] / 60,
        "params": params, "density": dens, "run_dir": str(run_dir),
    }


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per (task, arm)."""
    lines = [
        "| task | arm | encoder config | test top-1 (final) | best test top-1 | minutes | parameters | density (block 0) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        dens = "—" if r["density"] is None else f"{100 * r['density']:.1f} %"
        lines.append(f"| {r['task']} | {r['arm']} | {r['encoder']} | {r['top1']:.2f} % | {r['best_top1']:.2f} % | "
                     f"{r['minutes']:.1f} | {r['params'] / 1e6:.2f} M | {dens} |")
    return "\n".join(lines)


def main() -> None:
    """Run every requested (task, arm) pair and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                        help="cifar10 runs only when its files are found")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="a few steps per run, 2-block ViTs: checks every stage")
    parser.add_argument("--cifar-root", default=None, help="extracted cifar-10-batches-py directory")
    parser.add_argument("--cifar-epochs", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "runs" / "benchmark_encoders"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides for every run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = CLASSIFICATION._parse_set(args.set)
    extra["training.trainer.progress"] = str(not args.no_progress).lower()
    root = cifar_root(args.cifar_root)
    rows = []
    for task in args.tasks:
        if task == "cifar10" and root is None:
            print("[benchmark] cifar10: no extracted CIFAR-10 batches found (--cifar-root); skipped", flush=True)
            continue
        spec = task_spec(task, args.cifar_epochs, root)
        for arm in args.arms:
            if arm in IMAGE_ONLY and task == "moving_shapes":
                print(f"[benchmark] {task} / {arm}: skipped (FCViT is an image model)", flush=True)
                continue
            rows.append(run_one(task, arm, Path(args.out), spec, extra, args.quick))
            print(format_table(rows[-1:]), flush=True)
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (" (quick settings)" if args.quick else ""))
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
