"""Training curves of one or more runs, drawn from their ``metrics.jsonl``.

    python -m fibpolicy.plot runs/<run> [runs/<other> ...] --out curves.png
    python -m fibpolicy.plot runs/a runs/b --labels fib dense --metric test/success_rate --out cmp.png
    python -m fibpolicy.plot --frames runs/<run>/videos/<episode>.mp4 --out rollout.png   # a frame grid
    python -m fibpolicy.plot runs/<run> [runs/<other> ...] --table   # a Markdown row per evaluation

Four panels, one line per run: train loss and validation loss against optimisation steps, and the
evaluation metric (default ``test/mean_score``) against steps and against wall-clock minutes (the
run's cumulative ``wall_time_s``, which survives ``resume=true``). A run that never logged a key is
simply absent from that panel. ``--frames`` instead tiles evenly spaced frames of a rollout video;
``--table`` prints, per evaluation: step, epoch, minutes, samples/s so far, test and train scores,
test success and the evaluation's seconds.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_path

__all__ = ["evaluation_rows", "evaluation_table", "frame_grid", "main", "plot_runs", "read_metrics", "series"]


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a fibpolicy run directory?")
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def series(rows: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of every row that has a finite ``key`` (and ``x``); ``x="minutes"`` reads ``wall_time_s``."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        at = row.get("wall_time_s") if x == "minutes" else row.get(x)
        if isinstance(value, (int, float)) and isinstance(at, (int, float)) and math.isfinite(value):
            xs.append(at / 60.0 if x == "minutes" else float(at))
            ys.append(float(value))
    return xs, ys


def evaluation_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per evaluation of a run: step, epoch, minutes, samples/s so far, test/train scores, eval seconds."""
    from omegaconf import OmegaConf

    batch_size = int(OmegaConf.load(Path(run_dir) / "config.yaml").training.trainer.batch_size)
    rows = []
    for row in read_metrics(run_dir):
        if "test/mean_score" not in row or "wall_time_s" not in row:
            continue
        rows.append({
            "step": row["step"], "epoch": row.get("epoch"), "minutes": row["wall_time_s"] / 60.0,
            "samples_s": row["step"] * batch_size / max(row["wall_time_s"], 1e-9),
            "test": row["test/mean_score"], "success": row.get("test/success_rate"),
            "train": row.get("train/mean_score"), "train_success": row.get("train/success_rate"),
            "eval_s": row.get("eval/seconds"),
        })
    return rows


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def evaluation_table(runs: Sequence[str | Path], labels: Sequence[str] | None = None, label_header: str = "run") -> str:
    """A Markdown table with a row per evaluation of each run (``evaluation_rows``), its first column ``label_header``."""
    labels = list(labels) if labels is not None else [Path(r).name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    lines = [f"| {label_header} | step | epoch | minutes | samples/s | test mean score | test success | train mean score | train success | eval s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in zip(labels, runs):
        for r in evaluation_rows(run):
            lines.append(f"| {label} | {r['step']} | {r['epoch']} | {r['minutes']:.1f} | {r['samples_s']:.0f} | {r['test']:.3f} | "
                         f"{_cell(r['success'], '.2f')} | {_cell(r['train'], '.3f')} | {_cell(r['train_success'], '.2f')} | "
                         f"{_cell(r['eval_s'], '.0f')} |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, title: str | None, dpi: int) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=out.suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    _pyplot().close(fig)
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    metric: str = "test/mean_score",
    title: str | None = None,
) -> Path:
    """Draw the four panels for ``run_dirs`` into the PNG ``out`` (written atomically); returns its path."""
    plt = _pyplot()

    if not run_dirs:
        raise ValueError("give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    labels = list(labels) if labels is not None else [Path(r).name for r in run_dirs]
    runs = [read_metrics(r) for r in run_dirs]
    if not any(series(rows, metric)[0] for rows in runs):
        logged = sorted({k for rows in runs for row in rows for k in row})
        print(f"[fibpolicy] note: no run logged {metric!r}; its panels stay empty (logged keys: {logged})", flush=True)

    panels = [
        ("train/loss", "step", "train loss", True),
        ("val/loss", "step", "validation loss", True),
        (metric, "step", metric, False),
        (metric, "minutes", metric, False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, x, name, log_y) in zip(axes.flat, panels):
        for label, rows in zip(labels, runs):
            xs, ys = series(rows, key, x)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_xlabel("wall-clock minutes" if x == "minutes" else "optimisation steps")
        ax.set_ylabel(name)
        if log_y and ax.lines and all(y > 0 for line in ax.lines for y in line.get_ydata()):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, out, title, dpi=110)


def frame_grid(video: str | Path, out: str | Path, *, n_frames: int = 8, columns: int = 4, title: str | None = None) -> Path:
    """Tile ``n_frames`` evenly spaced frames of ``video`` (first and last included) into the PNG ``out``."""
    import numpy as np

    from .data.mp4 import read_mp4

    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"{video} does not exist")
    frames = read_mp4(video)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(n_frames, len(frames))).round().astype(int))
    rows = math.ceil(len(picks) / columns)
    fig, axes = _pyplot().subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, picks):
        ax.imshow(frames[index])
        ax.set_title(f"step {index}", fontsize=9)
    return _save(fig, out, title, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fibpolicy.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories (each holds a metrics.jsonl)")
    parser.add_argument("--out", default="curves.png", help="PNG to write (default: curves.png)")
    parser.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: directory names)")
    parser.add_argument("--metric", default="test/mean_score", help="evaluation metric to draw (default: test/mean_score)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--frames", default=None, metavar="VIDEO", help="draw a frame grid of this rollout mp4 instead")
    parser.add_argument("--n-frames", type=int, default=8)
    parser.add_argument("--table", action="store_true", help="print a Markdown table of the runs' evaluations instead")
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.frames):
        parser.error("give run directories, or --frames VIDEO (not both)")
    from .cli import user_errors

    with user_errors():
        if args.table:
            if not args.runs:
                parser.error("--table needs run directories")
            print(evaluation_table(args.runs, args.labels))
            return
        if args.frames:
            path = frame_grid(args.frames, args.out, n_frames=args.n_frames, title=args.title)
        else:
            path = plot_runs(args.runs, args.out, labels=args.labels, metric=args.metric, title=args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
