"""Scripted experts for robomimic Lift and Can: smooth, bounded OSC_POSE delta actions toward waypoints.

Each expert is a small state machine over phases (approach, descend, close, lift, ...). In every
phase the target is a fixed ``grip_site`` pose computed from the current object pose; the action is
mimicgen's target-pose-to-delta recipe (position error / 0.05 m and rotation error / 0.5 rad, clipped),
scaled by a gain, capped to a per-phase speed, and slew-rate limited so consecutive actions differ by
at most ``max_action_change`` (no jumps, like a teleoperator's hand). The gripper command ramps in
robosuite itself (about 8 steps for a full swing); the expert waits for the fingers before lifting.

    python -m envs.robomimic.experts --task lift --episodes 200 --seed-start 1000 --workers 2

reports the success rate, mean episode length and seconds per episode (without cameras).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

# grip_site orientation with the fingers pointing straight down (robosuite's default OSC target).
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
POS_SCALE = 0.05  # m per unit delta action (OSC_POSE output_max)
ROT_SCALE = 0.5  # rad per unit delta action


def rot_z(angle: float) -> np.ndarray:
    """Rotation by ``angle`` about the world z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mat_to_axis_angle(r: np.ndarray) -> np.ndarray:
    """Axis-angle (rotation vector) of a rotation matrix, robust near 0 and pi."""
    cos = float(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))
    angle = math.acos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    if angle > math.pi - 1e-4:
        # Near pi the antisymmetric part vanishes: take the axis from the symmetric part.
        m = (r + np.eye(3)) / 2.0
        axis = np.sqrt(np.clip(np.diag(m), 0.0, None))
        i = int(np.argmax(axis))
        axis = m[:, i] / math.sqrt(max(m[i, i], 1e-12))
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * math.sin(angle))
    return axis * angle


def quat_xyzw_to_mat(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion in robosuite's (x, y, z, w) order."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def planar_yaw(r: np.ndarray) -> float:
    """Yaw of a frame's x axis projected on the world xy plane."""
    return math.atan2(r[1, 0], r[0, 0])


@dataclass(frozen=True)
class ExpertConfig:
    """Tunable parameters (metres, normalised action units, env steps)."""

    pos_gain: float = 2.0  # action = gain * error / 0.05, before the speed cap
    rot_gain: float = 1.5
    fast: float = 1.0  # speed caps (normalised action units): free-space moves
    slow: float = 0.5  # near the object
    max_rot: float = 0.6
    max_action_change: float = 0.35  # slew-rate limit per step on the 6 arm dims
    close_steps: int = 7  # steps with the gripper closing before lifting
    open_steps: int = 6  # steps with the gripper opening before moving away
    extra_steps: int = 5  # steps recorded after success (PH demos end a few steps after success)
    # Lift
    lift_hover: float = 0.035  # approach point above the cube centre
    lift_grasp_dz: float = -0.003  # grip_site below the cube centre at the grasp
    lift_height: float = 0.10  # lift the cube this far above its start
    # Can
    can_hover: float = 0.06  # approach point above the can origin
    can_grasp_dz: float = 0.0
    carry_z: float = 1.06  # grip_site height while carrying over the bin wall
    place_target: tuple[float, float] = (0.165, 0.38)  # inside the +x/+y compartment, nearer the robot
    place_z: float = 0.95  # grip_site height at release
    retreat_z: float = 1.05
    noise: float = 0.0  # optional Gaussian action noise (mimicgen uses 0.05); 0 = deterministic


class _Expert:
    """Phase machine shared by the Lift and Can experts."""

    phases: tuple[str, ...] = ()

    def __init__(self, config: ExpertConfig | None = None, rng: np.random.Generator | None = None) -> None:
        self.cfg = config or ExpertConfig()
        self.rng = rng or np.random.default_rng(0)
        self.reset()

    def reset(self) -> None:
        """Start a new episode."""
        self.phase = self.phases[0]
        self.phase_steps = 0
        self.prev = np.zeros(7)
        self.target_ori: np.ndarray | None = None
        self.anchor: np.ndarray | None = None
        self.done = False

    # Subclasses implement plan(state) -> (target_pos, speed_cap, gripper).

    def _next(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    def _grasp(self, st: dict[str, np.ndarray], hover: float, grasp_dz: float,
               approach: tuple[float, int], descend: tuple[float, int]) -> tuple[np.ndarray, float, float] | None:
        """Plan the approach, descend and close phases both experts start with; None once the grasp is closed.

        ``approach`` and ``descend`` are each (distance in m that ends the phase, steps after which it ends
        anyway). The step that closes the grasp switches to "lift" and returns None, so the caller plans it.
        """
        cfg = self.cfg
        err = lambda t: np.linalg.norm(t - st["grip_pos"])  # noqa: E731
        if self.phase == "approach":
            target = st["obj_pos"] + [0.0, 0.0, hover]
            if err(target) < approach[0] or self.phase_steps > approach[1]:
                self._next("descend")
            else:
                return target, cfg.fast, -1.0
        if self.phase == "descend":
            target = st["obj_pos"] + [0.0, 0.0, grasp_dz]
            if err(target) < descend[0] or self.phase_steps > descend[1]:
                self._next("close")
                self.anchor = target.copy()
            else:
                return target, cfg.slow, -1.0
        if self.phase == "close":
            if self.phase_steps < cfg.close_steps:
                return self.anchor, cfg.slow, 1.0
            self._next("lift")
            self.grasped()
        return None

    def grasped(self) -> None:
        """Called once, on the step the grasp has closed (before the first "lift" plan)."""

    def act(self, env: Any) -> np.ndarray:
        """The next delta action for ``env`` (an :class:`envs.robomimic.RobomimicEnv` in delta mode)."""
        st = read_state(env)
        target, cap, grip = self.plan(st)
        cfg = self.cfg
        dpos = np.clip(cfg.pos_gain * (target - st["grip_pos"]) / POS_SCALE, -1.0, 1.0)
        norm = np.linalg.norm(dpos)
        if norm > cap:
            dpos *= cap / norm
        rerr = mat_to_axis_angle(self.target_ori @ st["grip_mat"].T)
        drot = np.clip(cfg.rot_gain * rerr / ROT_SCALE, -cfg.max_rot, cfg.max_rot)
        arm = np.concatenate([dpos, drot])
        if cfg.noise > 0:
            arm = arm + self.rng.normal(0.0, cfg.noise, 6)
        step = np.clip(arm - self.prev[:6], -cfg.max_action_change, cfg.max_action_change)
        arm = np.clip(self.prev[:6] + step, -1.0, 1.0)
        action = np.concatenate([arm, [grip]])
        self.prev = action
        self.phase_steps += 1
        return action


def read_state(env: Any) -> dict[str, np.ndarray]:
    """grip_site pose, object pose and finger positions straight from the simulator."""
    rs = env.rs_env
    sim = rs.sim
    sid = env.robot.eef_site_id
    if env.task == "lift":
        bid = rs.cube_body_id
    else:
        bid = rs.obj_body_id[rs.obj_to_use]
    return {
        "grip_pos": np.array(sim.data.site_xpos[sid]),
        "grip_mat": np.array(sim.data.site_xmat[sid]).reshape(3, 3),
        "obj_pos": np.array(sim.data.body_xpos[bid]),
        "obj_mat": np.array(sim.data.body_xmat[bid]).reshape(3, 3),
        "fingers": np.array(sim.data.qpos[env.robot._ref_gripper_joint_pos_indexes]),
    }


class LiftExpert(_Expert):
    """Grasp the cube from above (yaw aligned mod 90 degrees) and lift it past the success height."""

    phases = ("approach", "descend", "close", "lift")

    def plan(self, st: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
        cfg = self.cfg
        if self.target_ori is None:
            # Cube yaw relative to the down-pointing gripper, folded into [-45, 45) degrees.
            d = planar_yaw(st["obj_mat"]) - planar_yaw(R_DOWN)
            d = (d + math.pi / 4) % (math.pi / 2) - math.pi / 4
            self.target_ori = rot_z(d) @ R_DOWN
        planned = self._grasp(st, cfg.lift_hover, cfg.lift_grasp_dz, approach=(0.012, 60), descend=(0.006, 30))
        if planned is not None:
            return planned
        return self.anchor, cfg.fast, 1.0

    def grasped(self) -> None:
        """Lift straight up from the grasp point."""
        self.anchor = self.anchor + [0.0, 0.0, self.cfg.lift_height]


class CanExpert(_Expert):
    """Grasp the can from above, carry it over the bin wall, lower it into its compartment, release, retreat."""

    phases = ("approach", "descend", "close", "lift", "carry", "lower", "release", "retreat")

    def plan(self, st: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
        cfg = self.cfg
        if self.target_ori is None:
            self.target_ori = R_DOWN  # a vertical cylinder needs no yaw alignment
        planned = self._grasp(st, cfg.can_hover, cfg.can_grasp_dz, approach=(0.015, 80), descend=(0.01, 20))
        if planned is not None:
            return planned
        can, grip = st["obj_pos"], st["grip_pos"]
        place = np.array([cfg.place_target[0], cfg.place_target[1], cfg.place_z])
        if self.phase == "lift":
            if grip[2] > cfg.carry_z - 0.04 or self.phase_steps > 60:
                self._next("carry")
            else:
                return np.array([self.anchor[0], self.anchor[1], cfg.carry_z]), cfg.fast, 1.0
        if self.phase == "carry":
            target = np.array([place[0], place[1], cfg.carry_z])
            # Steer the can (not the hand) over the target: it may hang off-centre in the grasp.
            target[:2] += grip[:2] - can[:2]
            if np.linalg.norm(target[:2] - grip[:2]) < 0.025 or self.phase_steps > 120:
                self._next("lower")
                self.anchor = np.array([target[0], target[1], place[2]])
            else:
                return target, cfg.fast, 1.0
        if self.phase == "lower":
            if grip[2] < self.anchor[2] + 0.012 or self.phase_steps > 25:
                self._next("release")
            else:
                return self.anchor, cfg.slow, 1.0
        if self.phase == "release":
            if self.phase_steps >= cfg.open_steps:
                self._next("retreat")
            else:
                return self.anchor, cfg.slow, -1.0
        return np.array([self.anchor[0], self.anchor[1], cfg.retreat_z]), cfg.fast, -1.0


EXPERTS = {"lift": LiftExpert, "can": CanExpert}


def make_expert(task: str, config: ExpertConfig | None = None) -> _Expert:
    """The scripted expert for ``task`` ("lift" or "can")."""
    from envs.robomimic.env import check_task

    return EXPERTS[check_task(task)](config)


@dataclass
class Rollout:
    """One expert episode: the states before each action, the actions, and the outcome."""

    seed: int
    success: bool
    states: np.ndarray  # (N, D) flat MuJoCo states before each action
    actions: np.ndarray  # (N, 7) delta actions
    model_file: str
    success_step: int | None  # first step index t whose resulting state is a success
    seconds: float


def run_expert(
    env: Any,
    seed: int,
    max_steps: int = 400,
    config: ExpertConfig | None = None,
    record: bool = True,
    reload_model: bool = False,
) -> Rollout:
    """Run the expert from ``env.reset(seed=seed)``; stop ``extra_steps`` after the first success.

    ``env`` is a delta-action :class:`envs.robomimic.RobomimicEnv` (cameras are not needed).
    ``reload_model`` rebuilds the scene from its XML before the first action (used for demos).
    """
    cfg = config or ExpertConfig()
    expert = make_expert(env.task, cfg)
    t0 = time.perf_counter()
    env.reset(seed=seed)
    model = env.model_xml() if record or reload_model else ""
    if reload_model:
        # Roll out in the scene rebuilt from its own XML: MuJoCo's XML writer rounds numbers, so only
        # then does replaying the stored model_file + actions reproduce the states exactly.
        env.reset(options={"model": model, "state": env.get_state()["states"]})
    states, actions = [], []
    success_step = None
    for t in range(max_steps):
        if record:
            states.append(np.array(env.sim.get_state().flatten()))
        action = expert.act(env)
        actions.append(action)
        _, _, _, _, info = env.step(action)
        if info["is_success"] and success_step is None:
            success_step = t
        if success_step is not None and t >= success_step + cfg.extra_steps:
            break
    # Success means the task holds at the end (a drop after a transient success is a failure).
    success = success_step is not None and env.is_success()
    return Rollout(
        seed=seed,
        success=success,
        states=np.array(states),
        actions=np.array(actions),
        model_file=model,
        success_step=success_step,
        seconds=time.perf_counter() - t0,
    )


_WORKER_ENV: Any = None


def _eval_one(args: tuple[str, int, int, ExpertConfig | None]) -> tuple[int, bool, int, float]:
    global _WORKER_ENV
    task, seed, max_steps, cfg = args
    if _WORKER_ENV is None or _WORKER_ENV.task != task:
        from envs.robomimic.env import RobomimicEnv

        _WORKER_ENV = RobomimicEnv(task, use_image_obs=False)
    r = run_expert(_WORKER_ENV, seed, max_steps, cfg, record=False)
    return seed, r.success, len(r.actions), r.seconds


def evaluate(
    task: str,
    seeds: list[int],
    max_steps: int = 400,
    workers: int = 1,
    config: ExpertConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Success rate, mean length and seconds per episode of the expert on ``seeds`` (no cameras)."""
    tasks = [(task, s, max_steps, config) for s in seeds]
    results = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=f"{task} expert", unit="ep", disable=not progress, file=sys.stderr)
    if workers <= 1:
        it = map(_eval_one, tasks)
        for r in it:
            results.append(r)
            bar.update(1)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for r in pool.imap(_eval_one, tasks, chunksize=4):
                results.append(r)
                bar.update(1)
    bar.close()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[1]]
    return {
        "task": task,
        "episodes": len(results),
        "success_rate": len(ok) / len(results),
        "mean_length": float(np.mean([r[2] for r in results])),
        "mean_length_success": float(np.mean([r[2] for r in ok])) if ok else float("nan"),
        "max_length_success": int(max(r[2] for r in ok)) if ok else 0,
        "seconds_per_episode": float(np.mean([r[3] for r in results])),
        "wall_seconds": wall,
        "failed_seeds": [r[0] for r in results if not r[1]],
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: evaluate an expert on a range of seeds."""
    p = argparse.ArgumentParser(prog="python -m envs.robomimic.experts", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="lift or can")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed-start", type=int, default=1000)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override ExpertConfig fields")
    args = p.parse_args(argv)
    overrides = {}
    fields = {f.name: f for f in dataclasses.fields(ExpertConfig)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            p.error(f"unknown ExpertConfig field {name!r}; fields: {sorted(fields)}")
        default = getattr(ExpertConfig(), name)
        if isinstance(default, tuple):
            overrides[name] = tuple(float(v) for v in value.split(","))
        else:
            overrides[name] = type(default)(value)
    cfg = ExpertConfig(**overrides)
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    s = evaluate(args.task, seeds, args.max_steps, args.workers, cfg)
    print(
        f"{s['task']}: success {s['success_rate']:.1%} on {s['episodes']} seeds from {args.seed_start}, "
        f"mean length {s['mean_length']:.1f} (successes {s['mean_length_success']:.1f}, max {s['max_length_success']}), "
        f"{s['seconds_per_episode']:.2f} s/episode, wall {s['wall_seconds']:.0f} s; failed seeds {s['failed_seeds'][:20]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
