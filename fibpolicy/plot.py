"""Training curves of one or more runs, drawn from their ``metrics.jsonl``.

    python -m fibpolicy.plot runs/<run> [runs/<other> ...] --out curves.png
    python -m fibpolicy.plot runs/a runs/b --labels fib dense --metric test/success_rate --out cmp.png
    python -m fibpolicy.plot --frames runs/<run>/videos/<episode>.mp4 --out rollout.png   # a frame grid

Four panels, one line per run: train loss and validation loss against optimisation steps, and the
evaluation metric (default ``test/mean_score``) against steps and against wall-clock minutes (the
run's cumulative ``wall_time_s``, which survives ``resume=true``). A run that never logged a key is
simply absent from that panel. ``--frames`` instead tiles evenly spaced frames of a rollout video.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_path

__all__ = ["frame_grid", "main", "plot_runs", "read_metrics", "series"]


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
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.frames):
        parser.error("give run directories, or --frames VIDEO (not both)")
    from .cli import user_errors

    with user_errors():
        if args.frames:
            path = frame_grid(args.frames, args.out, n_frames=args.n_frames, title=args.title)
        else:
            path = plot_runs(args.runs, args.out, labels=args.labels, metric=args.metric, title=args.title)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
