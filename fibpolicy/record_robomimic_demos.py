"""Record scripted-expert robomimic demonstrations in robomimic's HDF5 layout: an entry point.

    python -m fibpolicy.record_robomimic_demos --task lift --out data/lift_expert.hdf5 --episodes 200 --workers 2

Like ``train.py`` it only composes: the episodes of ``envs.robomimic.demos.expert_demos`` (the scripted
experts) go through ``fibpolicy.data.record_robomimic_demos`` (the file). Being an entry point, it is
the one ``fibpolicy`` module allowed to import ``envs`` (tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

from envs.robomimic.demos import check_file, expert_demos, image_env_args
from envs.robomimic.env import MAX_EPISODE_STEPS

from .data.robomimic_demos import record_robomimic_demos, write_abs_copy


def _format_summary(task: str, s: Mapping[str, Any]) -> str:
    per_demo = s["seconds"] / max(s["episodes"], 1)
    return (
        f"wrote {s['path']}: {s['episodes_written']} of {s['episodes']} {task} demos, "
        f"success rate {s['success_rate']:.1%}, mean length {s['mean_length']:.1f} steps, "
        f"{s['frames']} samples, {s['seconds']:.1f} s ({per_demo:.2f} s/demo)"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m fibpolicy.record_robomimic_demos",
                                description="Record scripted-expert robomimic demonstrations in robomimic's HDF5 layout.")
    p.add_argument("--task", required=True, help="lift or can")
    p.add_argument("--out", required=True, help="output HDF5 file, e.g. data/lift_expert.hdf5")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes (seeds) to run")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--keep-failed", action="store_true", help="also write episodes that did not succeed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS, help=f"step limit per episode ({MAX_EPISODE_STEPS})")
    p.add_argument("--camera-size", type=int, default=84, help="camera height and width (84)")
    p.add_argument("--render-quality", choices=("fast", "reference"), default="fast")
    p.add_argument("--compress", action="store_true", help="gzip the observations (robomimic --compress)")
    p.add_argument("--abs-copy", default=None, help="also write Diffusion Policy's image_abs.hdf5 layout here")
    p.add_argument("--check", type=int, default=0, metavar="N", help="replay-check the first N demos afterwards")
    args = p.parse_args(argv)
    try:
        source = partial(expert_demos, args.task, episodes=args.episodes, seed_start=args.seed_start,
                         workers=args.workers, max_steps=args.max_steps, camera_size=args.camera_size,
                         render_quality=args.render_quality)
        summary = record_robomimic_demos(
            args.out, source, env_args=partial(image_env_args, args.task, args.camera_size),
            keep_failed=args.keep_failed, overwrite=args.overwrite, compress=args.compress,
        )
        if args.abs_copy:
            write_abs_copy(args.out, args.abs_copy, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_format_summary(args.task, summary))
    if args.check:
        for name, r in check_file(args.out, args.check).items():
            print(f"{name}: {json.dumps(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
