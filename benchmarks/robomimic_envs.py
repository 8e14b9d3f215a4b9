"""robomimic Lift / Can speed: env steps/s (default vs tuned rendering, with and without cameras), reset time,
tuned-vs-default pixel difference, and (``--demos``) demonstration generation time. Prints markdown tables.

    OMP_NUM_THREADS=1 python benchmarks/robomimic_envs.py                 # env table, both tasks
    OMP_NUM_THREADS=1 python benchmarks/robomimic_envs.py --demos 20      # + seconds per demo (lift, images)
    MUJOCO_GL=osmesa python benchmarks/robomimic_envs.py --tasks lift     # another GL backend
    python benchmarks/robomimic_envs.py --tasks lift --skip-env --workers 1 16   # parallel workers, 2 cameras

Run it on an otherwise idle machine: every figure is single-process, single-thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from envs.robomimic import RobomimicEnv  # noqa: E402


def _steps_per_s(env: RobomimicEnv, steps: int, seed: int = 0) -> float:
    """Steps/s of random bounded delta actions (the action content barely changes the cost)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.step(np.zeros(7))  # warm-up (first render allocates buffers)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(rng.uniform(-0.3, 0.3, 7))
    return steps / (time.perf_counter() - t0)


def _reset_s(env: RobomimicEnv, n: int) -> float:
    """Mean seconds of ``reset(seed=s)`` for fresh seeds (no cache hits)."""
    t0 = time.perf_counter()
    for s in range(10_000, 10_000 + n):
        env.reset(seed=s)
    return (time.perf_counter() - t0) / n


def _pixel_diff(task: str, size: int, seeds: int) -> dict[str, float]:
    """Mean absolute uint8 difference of tuned vs reference renders at the same states."""
    tuned = RobomimicEnv(task, camera_size=size, render_quality="fast")
    ref = RobomimicEnv(task, camera_size=size, render_quality="reference")
    rng = np.random.default_rng(0)
    diffs: dict[str, list[float]] = {k: [] for k in tuned.image_keys}
    for s in range(seeds):
        a, _ = tuned.reset(seed=s)
        b, _ = ref.reset(seed=s)
        for _ in range(10):
            act = rng.uniform(-0.5, 0.5, 7)
            a, *_ = tuned.step(act)
            b, *_ = ref.step(act)
        for k in diffs:
            diffs[k].append(float(np.abs(a[k].astype(np.int16) - b[k].astype(np.int16)).mean()))
    tuned.close()
    ref.close()
    return {k: float(np.mean(v)) for k, v in diffs.items()}


def env_table(tasks: list[str], steps: int, resets: int, size: int) -> None:
    """Print steps/s and reset time per task and render setting."""
    rows = []
    for task in tasks:
        for label, kwargs in (
            ("no cameras", {"use_image_obs": False}),
            (f"2 cams {size}², default render", {"camera_size": size, "render_quality": "reference"}),
            (f"2 cams {size}², tuned render", {"camera_size": size, "render_quality": "fast"}),
        ):
            t0 = time.perf_counter()
            env = RobomimicEnv(task, **kwargs)
            build = time.perf_counter() - t0
            sps = _steps_per_s(env, steps if kwargs.get("use_image_obs", True) else steps * 3)
            reset = _reset_s(env, resets)
            rows.append((task, label, sps, reset, build))
            env.close()
    from envs.robomimic import _backend

    print(f"\nrobomimic env speed (MUJOCO_GL={_backend.GL_BACKEND}, 1 process, OMP_NUM_THREADS=1)\n")
    print("| task | observations | steps/s | reset (s) | build (s) |")
    print("|---|---|---:|---:|---:|")
    for task, label, sps, reset, build in rows:
        print(f"| {task} | {label} | {sps:.1f} | {reset:.3f} | {build:.2f} |")
    print("\nTuned vs default rendering: mean |Δ| of uint8 pixels at identical states (10 steps in, 3 seeds)\n")
    print("| task | agentview_image | robot0_eye_in_hand_image |")
    print("|---|---:|---:|")
    for task in tasks:
        d = _pixel_diff(task, size, 3)
        print(f"| {task} | {d['agentview_image']:.2f} | {d['robot0_eye_in_hand_image']:.2f} |")


def _worker_steps_per_s(task: str, size: int, steps: int, seed: int, barrier) -> float:
    env = RobomimicEnv(task, camera_size=size, render_quality="fast")
    env.reset(seed=seed)
    env.step(np.zeros(7))
    barrier.wait()  # every worker built and warmed up: time only the stepping, all at once
    sps = _steps_per_s(env, steps, seed)
    env.close()
    return sps


def workers_table(tasks: list[str], workers: list[int], steps: int, size: int) -> None:
    """Print env steps/s with two cameras for N processes stepping at once (what an evaluation's workers do)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from envs.robomimic import _backend

    _backend.select_gl_backend()  # probe once here; the spawned workers inherit MUJOCO_GL
    ctx = mp.get_context("spawn")  # forking after GL initialisation crashes
    rows = []
    for task in tasks:
        for n in workers:
            barrier = ctx.Manager().Barrier(n)
            with ProcessPoolExecutor(n, mp_context=ctx) as pool:
                rates = list(pool.map(_worker_steps_per_s, [task] * n, [size] * n, [steps] * n, range(n), [barrier] * n))
            rows.append((task, n, float(np.mean(rates)), float(np.sum(rates))))
    print(f"\nrobomimic env steps/s, N workers at once (MUJOCO_GL={os.environ.get('MUJOCO_GL')}, 2 cams {size}², tuned render, "
          f"{os.cpu_count()} cores)\n")
    print("| task | workers | steps/s per worker | steps/s in all |")
    print("|---|---:|---:|---:|")
    for task, n, mean, total in rows:
        print(f"| {task} | {n} | {mean:.1f} | {total:.1f} |")


def demo_table(tasks: list[str], episodes: int, size: int) -> None:
    """Print seconds per demo (rollout + image extraction + abs conversion + writing), one worker."""
    from envs.robomimic.demos import generate_demos

    print(f"\nDemonstration generation (1 worker, 2 cameras {size}², tuned render)\n")
    print("| task | demos | success | mean length | s/demo | 200 demos (min, 1 worker) |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            s = generate_demos(task, Path(tmp) / f"{task}.hdf5", episodes, seed_start=0, camera_size=size, progress=False)
            print(
                f"| {task} | {episodes} | {s['success_rate']:.0%} | {s['mean_length']:.1f} | "
                f"{s['seconds_per_demo']:.2f} | {200 * s['seconds_per_demo'] / 60:.1f} |"
            )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["lift", "can"], choices=["lift", "can"])
    p.add_argument("--steps", type=int, default=200, help="timed steps with cameras (x3 without)")
    p.add_argument("--resets", type=int, default=10)
    p.add_argument("--size", type=int, default=84, help="camera height and width")
    p.add_argument("--demos", type=int, default=0, help="also time generating N demos per task")
    p.add_argument("--skip-env", action="store_true", help="skip the single-process env table")
    p.add_argument("--workers", type=int, nargs="*", default=[], help="also time N processes stepping at once")
    args = p.parse_args(argv)
    if not args.skip_env:
        env_table(args.tasks, args.steps, args.resets, args.size)
    if args.workers:
        workers_table(args.tasks, args.workers, args.steps, args.size)
    if args.demos:
        demo_table(args.tasks, args.demos, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
