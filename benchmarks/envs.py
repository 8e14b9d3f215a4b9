"""Step rate of our PushT env next to the public gym-pusht package, with pixel and state observations.

    python benchmarks/envs.py --reference-python /tmp/gympusht-venv/bin/python

gym-pusht pins pymunk < 7, so it lives in its own environment; when it cannot be imported here, its
half of the table is timed by running this same file with ``--reference-python`` in worker mode (that
mode imports neither ``envs`` nor ``fibpolicy``). Both envs replay exactly the same action sequences
from the same initial states (their physics agree to the last bit), so they simulate the same
scenes. Workloads: uniformly random targets, and the scripted expert's actions (the block moves in
about a third of those steps, so the block is redrawn more often). Only ``step`` calls are timed;
each cell is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OBS_TYPES = ("pixels_agent_pos", "state")
REPO = Path(__file__).resolve().parents[1]


def time_steps(make_env, episodes: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> float:
    """Best steps/s over ``repeats`` passes through ``episodes`` ((initial state, actions) pairs)."""
    env = make_env()
    best = 0.0
    for _ in range(repeats):
        elapsed, n = 0.0, 0
        for init, actions in episodes:
            env.reset(options={"reset_to_state": init})
            t0 = time.perf_counter()
            for a in actions:
                env.step(a)
            elapsed += time.perf_counter() - t0
            n += len(actions)
        best = max(best, n / elapsed)
    return best


def time_gym_pusht(
    workloads: dict[str, list[tuple[np.ndarray, np.ndarray]]], repeats: int
) -> dict[str, dict[str, float]]:
    """Step rates of ``gym_pusht/PushT-v0`` (must be importable in this interpreter)."""
    import warnings

    warnings.filterwarnings("ignore")
    import gym_pusht  # noqa: F401  (registers the env)
    import gymnasium as gym

    out: dict[str, dict[str, float]] = {}
    for name, episodes in workloads.items():
        out[name] = {}
        for obs_type in OBS_TYPES:

            def make(obs_type=obs_type):
                # .unwrapped: time the env itself, without gymnasium's checking wrappers.
                return gym.make(
                    "gym_pusht/PushT-v0", obs_type=obs_type, observation_width=96, observation_height=96
                ).unwrapped

            out[name][obs_type] = time_steps(make, episodes, repeats)
    return out


def time_ours(workloads: dict[str, list[tuple[np.ndarray, np.ndarray]]], repeats: int) -> dict[str, dict[str, float]]:
    """Step rates of :class:`envs.pusht.PushTEnv`."""
    from envs.pusht import PushTEnv

    return {
        name: {
            obs: time_steps(lambda obs=obs: PushTEnv(obs_type=obs, render_size=96), episodes, repeats)
            for obs in OBS_TYPES
        }
        for name, episodes in workloads.items()
    }


def build_workloads(steps: int, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Random-target and expert action sequences of about ``steps`` steps each."""
    from envs.pusht import PushTEnv, reference_reset_state
    from envs.pusht.expert import PushTExpert

    rng = np.random.default_rng(seed)
    random_eps = [(reference_reset_state(seed), rng.uniform(0, 512, size=(steps, 2)))]
    expert_eps, total, s = [], 0, seed
    env, expert = PushTEnv(obs_type="state"), PushTExpert()
    while total < steps:
        _, info = env.reset(seed=s)
        expert.reset()
        actions = []
        for _ in range(min(300, steps - total)):
            a = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"])
            actions.append(a)
            _, _, done, _, info = env.step(a)
            if done:
                break
        expert_eps.append((reference_reset_state(s), np.array(actions)))
        total += len(actions)
        s += 1
    return {"random actions": random_eps, "expert actions": expert_eps}


def _save_workloads(path: str, workloads: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> None:
    arrays = {}
    for w, (name, episodes) in enumerate(workloads.items()):
        arrays[f"name_{w}"] = np.array(name)
        for e, (init, actions) in enumerate(episodes):
            arrays[f"w{w}_e{e}_init"] = init
            arrays[f"w{w}_e{e}_actions"] = actions
    np.savez(path, **arrays)


def _load_workloads(path: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    data = np.load(path)
    out = {}
    w = 0
    while f"name_{w}" in data:
        episodes, e = [], 0
        while f"w{w}_e{e}_init" in data:
            episodes.append((data[f"w{w}_e{e}_init"], data[f"w{w}_e{e}_actions"]))
            e += 1
        out[str(data[f"name_{w}"])] = episodes
        w += 1
    return out


def _reference_in_subprocess(python: str, workloads, repeats: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        wl, res = os.path.join(tmp, "workloads.npz"), os.path.join(tmp, "result.json")
        _save_workloads(wl, workloads)
        cmd = [python, str(Path(__file__).resolve()), "--reference-worker", wl, res, "--repeats", str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"gym-pusht worker ({python}) failed:\n{proc.stderr[-2000:]}")
        with open(res) as f:
            return json.load(f)


def _gym_pusht_importable() -> bool:
    try:
        import gym_pusht  # noqa: F401
    except Exception:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Print the step-rate table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="steps per workload (default 2000)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per cell, best kept (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-python", help="python executable of an environment with gym-pusht installed")
    p.add_argument("--reference-worker", nargs=2, metavar=("WORKLOADS", "RESULT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.reference_worker:  # worker mode: runs under the gym-pusht interpreter, imports no project code
        result = time_gym_pusht(_load_workloads(args.reference_worker[0]), args.repeats)
        with open(args.reference_worker[1], "w") as f:
            json.dump(result, f)
        return 0

    sys.path.insert(0, str(REPO))
    workloads = build_workloads(args.steps, args.seed)
    ours = time_ours(workloads, args.repeats)
    if _gym_pusht_importable():
        ref, ref_note = time_gym_pusht(workloads, args.repeats), "gym-pusht (this interpreter)"
    elif args.reference_python:
        ref, ref_note = (
            _reference_in_subprocess(args.reference_python, workloads, args.repeats),
            f"gym-pusht ({args.reference_python})",
        )
    else:
        ref, ref_note = None, "gym-pusht not importable; pass --reference-python"

    print(
        f"PushT env steps/s ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}; best of {args.repeats}; reference: {ref_note})"
    )
    header = f"{'workload':<16} {'observation':<18} {'fibpolicy':>10} {'gym-pusht':>10} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name in workloads:
        for obs in OBS_TYPES:
            mine = ours[name][obs]
            theirs = ref[name][obs] if ref else float("nan")
            label = "pixels 96x96" if obs == "pixels_agent_pos" else "state"
            speedup = f"{mine / theirs:8.1f}x" if ref else "      n/a"
            print(f"{name:<16} {label:<18} {mine:>10.0f} {theirs:>10.0f} {speedup}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
