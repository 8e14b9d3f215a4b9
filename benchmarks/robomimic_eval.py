"""robomimic evaluation cost: the reference protocol on a trained checkpoint, with the episode stopping at
success (the task default) and without, for one or more worker counts. Prints a markdown table.

    python benchmarks/robomimic_eval.py runs/<run>                      # stop on success on / off, 14 envs
    python benchmarks/robomimic_eval.py runs/<run> --n-envs 7 14 28 --stop on

Columns: wall seconds, where they went (policy calls, env steps with IPC, filming), env steps run, the
workers' memory (RSS with shared libraries, USS their own), and the scores, which must not depend on
stopping (max reward cannot change after success). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibpolicy.checkpoint import load_config, resolve_checkpoint  # noqa: E402
from fibpolicy.rollout.evaluate import evaluate_checkpoint  # noqa: E402


def _row(stop: bool, n_envs: int, rec: dict) -> str:
    t, m = rec["timing"], rec.get("memory", {})
    steps = sum(e["length"] for e in rec["episodes"])
    return (f"| {'on' if stop else 'off'} | {n_envs} | {rec['seconds']:.1f} | {t.get('policy_s', 0):.1f} | {t.get('env_s', 0):.1f} "
            f"| {t.get('video_s', 0):.1f} | {steps} | {m.get('env_rss_mb_mean', float('nan')):.0f} "
            f"| {m.get('env_uss_mb_mean', float('nan')):.0f} | {rec['mean_score']:.3f} | {rec.get('train/mean_score', float('nan')):.3f} |")


def main(argv: list[str] | None = None) -> int:
    """Evaluate the checkpoint under each setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run directory or checkpoint directory")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[14])
    parser.add_argument("--stop", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--n-test", type=int, default=None, help="test episodes (default: the protocol's 50)")
    parser.add_argument("--n-train", type=int, default=None, help="train episodes (default: the protocol's 6)")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per episode (default: the protocol's 400)")
    args = parser.parse_args(argv)
    path = resolve_checkpoint(args.checkpoint)
    print(f"checkpoint {path}\n")
    print("| stop on success | envs | seconds | policy s | env s | video s | env steps | env RSS MB | env USS MB | test score | train score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_envs in args.n_envs:
        for stop in args.stop:
            cfg = load_config(path)
            cfg.task.evaluator.env.terminate_on_success = stop == "on"
            with tempfile.TemporaryDirectory() as out:
                rec = evaluate_checkpoint(path, output_dir=out, config=cfg, n_envs=n_envs, n_test=args.n_test,
                                          n_train=args.n_train, max_steps=args.max_steps)
            print(_row(stop == "on", n_envs, rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
