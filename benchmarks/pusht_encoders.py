"""The PushT encoder study: the same recipe, seed and wall-clock budget for each image encoder.

    python benchmarks/pusht_encoders.py                       # every arm, 60 minutes each, runs/pusht_encoders/
    python benchmarks/pusht_encoders.py --arms fib dense --minutes 30 --out runs/study30
    python benchmarks/pusht_encoders.py --report-only         # tables and plot from the runs already there

Each arm is ``python train.py <arm overrides> training.trainer.max_minutes=<minutes>`` (the default CPU
recipe otherwise) in its own run directory. An arm whose run directory already holds a run is resumed
from its checkpoint (``resume=true`` continues exactly; the budget counts every session's minutes), so
the study survives being killed; one killed before its first checkpoint is started again. Arms: the
default Fibottention ViT, its dense twin (same initialisation), Fibottention with ``mode=additive``, the
reference ResNet-18 GN with spatial soft-max, and Crossway (the default encoder with the reconstruction
loss). The report is a Markdown table per checkpoint (test mean score, success rate, steps, samples/s,
minutes) and a PNG of test score against minutes and steps.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fibpolicy.atomic import write_json, write_text  # noqa: E402
from fibpolicy.plot import evaluation_rows, evaluation_table, plot_runs  # noqa: E402
from fibpolicy.training.run_dir import continuation_overrides  # noqa: E402

ARMS: dict[str, list[str]] = {
    "fib": [],
    "dense": ["encoder=vit_dense_cpu"],
    "fib_additive": ["+encoder.mode=additive"],
    "resnet18_gn": ["encoder=resnet18_gn"],
    "crossway": ["policy=diffusion_unet_crossway"],
}


def run_arm(name: str, out: Path, minutes: float, extra: list[str]) -> int:
    """Train (or resume) one arm; returns the exit status of train.py."""
    run_dir = out / name
    overrides = [*ARMS[name], f"training.trainer.max_minutes={minutes}", f"run_dir={run_dir}", *extra]
    overrides += continuation_overrides(run_dir)
    print(f"[study] {name}: python train.py {' '.join(overrides)}", flush=True)
    return subprocess.call([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT)


def report(out: Path, arms: list[str]) -> str:
    """The Markdown table of every arm that has a run; writes it, its JSON and the PNG into ``out``."""
    found = {name: evaluation_rows(out / name) for name in arms if (out / name / "config.yaml").exists()}
    table = evaluation_table([out / n for n in found], list(found), label_header="arm")
    if found:
        png = plot_runs([out / n for n in found], out / "pusht_encoders.png", labels=list(found),
                        title="PushT from pixels: encoder study (one seed, 50 test episodes)")
        table += f"\n\n![test score against minutes and steps]({png.name})\n"
        write_text(out / "pusht_encoders.md", table + "\n")
        write_json(out / "pusht_encoders.json", found)
    return table


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget per arm (default 60)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "pusht_encoders")
    parser.add_argument("--report-only", action="store_true", help="only write the tables and the plot")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every arm (sizes, steps)")
    args = parser.parse_args()
    if not args.report_only:
        for name in args.arms:
            status = run_arm(name, args.out, args.minutes, args.overrides)
            if status:
                print(f"[study] {name}: train.py exited with status {status}; continuing with the next arm", flush=True)
    print(report(args.out, args.arms))


if __name__ == "__main__":
    main()
