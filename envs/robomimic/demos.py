"""Scripted-expert robomimic Lift / Can demonstrations, as episodes for robomimic's HDF5 layout.

:func:`expert_demos` yields one episode per seed (``{"data", "meta", "success"}``); fibpolicy writes
them (``python -m fibpolicy.record_robomimic_demos``, or a robomimic task's data preparation), so this
package never writes files itself. ``data`` holds ``states`` (n, D) flat ``[time, qpos, qvel]``
*before* each action, ``actions`` (n, 7) delta OSC_POSE in [-1, 1], ``actions_abs`` (n, 7),
``rewards`` (n,), ``dones`` (n,) (done mode 2: 1 at success states and at the last step), and
``obs/<key>`` / ``next_obs/<key>`` for every key robomimic returns, with the two camera images
``agentview_image`` and ``robot0_eye_in_hand_image``; ``meta`` holds ``model_file`` (the scene MJCF)
and ``seed``.

How a demo is made (the same three passes robomimic and Diffusion Policy use on the human data):

1. **Rollout** without cameras: ``np.random.seed(seed)`` and a *hard* reset (so Lift's cube size is
   drawn per demo, as in PH); the scene is then rebuilt from its own ``model_file`` (MuJoCo's XML
   writer rounds numbers, so only then do the stored actions replay the stored states exactly), and
   the expert runs until ``extra_steps`` after success. States are recorded before each action.
2. **Observations** by replaying the states in the image env, exactly like
   ``dataset_states_to_obs.extract_trajectory``: reset to ``model_file`` + ``states[0]``, then
   ``next_obs[t]`` = obs at ``states[t+1]``; the last ``next_obs`` comes from stepping the last action.
3. **Absolute actions** by Diffusion Policy's conversion (``robomimic_dataset_conversion.py``):
   reset to ``states[t]``, let the delta controller compute its goal from ``actions[t]`` without
   stepping, and store ``[goal_pos, rotvec(goal_ori), gripper]``. They are stored as
   ``actions_abs`` next to the delta ``actions`` (robomimic's newer convention,
   ``robosuite_add_absolute_actions.py``).

The reading helpers (:func:`load_demo`, :func:`check_file` and the replays) check a written file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from envs.parallel import ordered_map
from envs.robomimic.env import MAX_EPISODE_STEPS, RobomimicEnv, check_task, env_meta_from_dataset
from envs.robomimic.experts import ExpertConfig, run_expert

ABS_ACTION_KEY = "actions_abs"


@dataclass
class Demo:
    """One demonstration, ready to write."""

    seed: int
    success: bool
    model_file: str
    data: dict[str, np.ndarray]  # states, actions, actions_abs, rewards, dones
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    next_obs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def length(self) -> int:
        """Number of samples (actions)."""
        return len(self.data["actions"])

    def episode(self) -> dict[str, Any]:
        """The demo as an episode for ``record_demos``: dataset paths inside its HDF5 demo group, and attributes."""
        data = dict(self.data)
        for group, obs in (("obs", self.obs), ("next_obs", self.next_obs)):
            data.update({f"{group}/{k}": v for k, v in obs.items()})
        return {"data": data, "meta": {"model_file": self.model_file, "seed": self.seed}, "success": self.success}


class DemoRecorder:
    """The envs one worker needs: a rollout env (no cameras, hard resets) and the image env."""

    def __init__(
        self,
        task: str,
        camera_size: int = 84,
        render_quality: str = "fast",
        config: ExpertConfig | None = None,
        max_steps: int = MAX_EPISODE_STEPS,
    ) -> None:
        self.task = check_task(task)
        self.config = config or ExpertConfig()
        self.max_steps = max_steps
        self.rollout_env = RobomimicEnv(self.task, use_image_obs=False, hard_reset=True)
        self.image_env = RobomimicEnv(
            self.task, use_image_obs=True, camera_size=camera_size, render_quality=render_quality, obs_keys="all"
        )
        self._image_model: str | None = None
        self.key: tuple = ()

    def close(self) -> None:
        """Free both envs."""
        self.rollout_env.close()
        self.image_env.close()

    def record(self, seed: int) -> Demo:
        """Roll the expert out from ``seed``, then extract observations and absolute actions."""
        t0 = time.perf_counter()
        r = run_expert(self.rollout_env, seed, self.max_steps, self.config, reload_model=True)
        abs_actions = delta_to_abs_actions(self.rollout_env, r.states, r.actions)
        traj = self.extract(r.model_file, r.states, r.actions)
        data = {
            "states": r.states,
            "actions": r.actions,
            ABS_ACTION_KEY: abs_actions,
            "rewards": traj.pop("rewards"),
            "dones": traj.pop("dones"),
        }
        return Demo(
            seed=seed,
            success=r.success,
            model_file=r.model_file,
            data=data,
            obs=traj["obs"],
            next_obs=traj["next_obs"],
            seconds=time.perf_counter() - t0,
        )

    def extract(self, model_file: str, states: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
        """robomimic's ``extract_trajectory`` (done mode 2) in the image env."""
        env = self.image_env
        if model_file != self._image_model:
            obs, _ = env.reset(options={"model": model_file, "state": states[0]})
            self._image_model = model_file
        else:
            obs, _ = env.reset(options={"state": states[0]})
        # The image env returns every key (obs_keys="all"), so the reset observation is complete.
        n = len(states)
        obs_list, next_list, rewards, dones = [], [], [], []
        for t in range(1, n + 1):
            if t == n:
                env.step(actions[t - 1])
                nxt = env.observation()
            else:
                env.rm_env.reset_to({"states": states[t]})
                nxt = env.observation()
            rewards.append(env.rm_env.get_reward())
            dones.append(int(t == n or env.is_success()))
            obs_list.append(obs)
            next_list.append(nxt)
            obs = nxt
        stack = lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]}  # noqa: E731
        return {
            "obs": stack(obs_list),
            "next_obs": stack(next_list),
            "rewards": np.asarray(rewards, dtype=np.float64),
            "dones": np.asarray(dones, dtype=np.int64),
        }


def delta_to_abs_actions(env: RobomimicEnv, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Diffusion Policy's conversion: the delta controller's goal pose for each (state, action).

    ``env`` must be a delta-action env of the same robot (the scene's objects do not matter). For
    each t: set ``states[t]``, run ``robot.control(actions[t], policy_step=True)`` (computes the goal,
    does not step), read ``goal_pos`` and ``goal_ori``. The gripper value is kept. The controller is
    reset first, so its goal orientation starts as in the recorded rollout.
    """
    from scipy.spatial.transform import Rotation

    if not env.control_delta:
        raise ValueError("delta_to_abs_actions needs a delta-action env (control_delta=True)")
    states = np.asarray(states)
    actions = np.asarray(actions, dtype=np.float64)
    env.reset(options={"state": states[0]})
    robot = env.robot
    out = np.zeros((len(actions), 7))
    for t, (s, a) in enumerate(zip(states, actions)):
        env.rm_env.reset_to({"states": s})
        robot.controller.update(force=True)  # the goal must start from this state's pose (see env._sync_controller)
        robot.control(a, policy_step=True)
        out[t, :3] = robot.controller.goal_pos
        out[t, 3:6] = Rotation.from_matrix(robot.controller.goal_ori).as_rotvec()
        out[t, 6] = a[6]
    return out


_RECORDER: DemoRecorder | None = None


def _record_task(args: tuple[str, int, int, str, ExpertConfig | None, int]) -> Demo:
    global _RECORDER
    task, camera_size, max_steps, render_quality, config, seed = args
    key = (task, camera_size, max_steps, render_quality, config)
    # One recorder per process, rebuilt when the settings change (two calls in one process may differ).
    if _RECORDER is None or _RECORDER.key != key:
        if _RECORDER is not None:
            _RECORDER.close()
        _RECORDER = DemoRecorder(task, camera_size, render_quality, config, max_steps)
        _RECORDER.key = key
    return _RECORDER.record(seed)


def _close_recorder() -> None:
    """Free this process's recorder envs (their GL contexts would otherwise be torn down noisily at exit)."""
    global _RECORDER
    if _RECORDER is not None:
        _RECORDER.close()
        _RECORDER = None


def _demos(tasks: list[tuple], workers: int) -> Iterator[Demo]:
    # Spawned workers: a forked process that inherits an OpenGL context segfaults.
    return ordered_map(_record_task, tasks, workers)


def expert_demos(
    task: str,
    episodes: int,
    seed_start: int = 0,
    workers: int | None = 1,
    max_steps: int = MAX_EPISODE_STEPS,
    camera_size: int = 84,
    render_quality: str = "fast",
    config: ExpertConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """One expert episode per seed ``seed_start, …``, in seed order; ``workers=None`` uses every core.

    Each is ``{"data": {dataset path: array}, "meta": {"model_file", "seed"}, "success": bool}``, the
    episode form ``fibpolicy.data.record_demos`` writes.
    """
    task = check_task(task)
    if workers is None:  # the machine's cores
        workers = os.cpu_count() or 1
    if episodes < 1:
        raise ValueError(f"expert_demos: episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"expert_demos: workers must be >= 1, got {workers}")
    if max_steps < 1:
        raise ValueError(f"expert_demos: max_steps must be >= 1, got {max_steps}")
    tasks = [(task, camera_size, max_steps, render_quality, config, s) for s in range(seed_start, seed_start + episodes)]
    try:
        for demo in _demos(tasks, workers):
            yield demo.episode()
    finally:
        _close_recorder()


def image_env_args(task: str, camera_size: int = 84) -> dict[str, Any]:
    """``EnvRobosuite.serialize()`` of the image env the demos' observations come from (robomimic's ``env_args``)."""
    env = RobomimicEnv(check_task(task), use_image_obs=True, camera_size=camera_size)
    try:
        return env.env_meta
    finally:
        env.close()


# -- reading and replay checks ------------------------------------------------------------------


def load_demo(path: str | os.PathLike, name: str | int, obs: bool = False) -> dict[str, Any]:
    """``states``, ``actions``, ``actions_abs`` (if present), ``rewards``, ``dones``, ``model_file`` of a demo."""
    import h5py

    if isinstance(name, int):
        name = f"demo_{name}"
    with h5py.File(path, "r") as f:
        if "data" not in f or name not in f["data"]:
            have = sorted(f["data"].keys())[:5] if "data" in f else []
            raise KeyError(f"{path}: no demo {name!r} under data/ (first demos: {have})")
        g = f["data"][name]
        for key in ("states", "actions"):
            if key not in g:
                raise KeyError(f"{path}: data/{name} has no {key!r} dataset")
        if "model_file" not in g.attrs:
            raise KeyError(f"{path}: data/{name} has no 'model_file' attribute")
        out: dict[str, Any] = {k: g[k][()] for k in ("states", "actions", ABS_ACTION_KEY, "rewards", "dones") if k in g}
        out["model_file"] = g.attrs["model_file"]
        if isinstance(out["model_file"], bytes):
            out["model_file"] = out["model_file"].decode()
        if obs:
            out["obs"] = {k: g["obs"][k][()] for k in g["obs"]}
    return out


def replay_states(env: RobomimicEnv, demo: dict[str, Any]) -> dict[str, Any]:
    """Set each stored state in turn; success must hold at the states after the recorded success."""
    states = demo["states"]
    env.reset(options={"model": demo["model_file"], "state": states[0]})
    success = []
    for s in states:
        env.rm_env.reset_to({"states": s})
        success.append(env.is_success())
    return {"success": bool(any(success)), "success_steps": int(np.sum(success))}


def replay_actions(env: RobomimicEnv, demo: dict[str, Any], absolute: bool = False) -> dict[str, Any]:
    """Step the stored delta (or absolute) actions from the demo's first state; report success and drift.

    ``env`` must use the matching action mode (``control_delta`` False for ``absolute``).
    """
    key = ABS_ACTION_KEY if absolute else "actions"
    if key not in demo:
        raise KeyError(f"demo has no {key!r} actions")
    if env.control_delta == absolute:
        raise ValueError(f"replay_actions(absolute={absolute}) needs an env with control_delta={not absolute}")
    states = demo["states"]
    env.reset(options={"model": demo["model_file"], "state": states[0]})
    ever, errors = False, []
    for t, a in enumerate(demo[key]):
        if t > 0:
            errors.append(float(np.abs(env.sim.get_state().flatten()[1:] - states[t][1:]).max()))
        _, _, _, _, info = env.step(a)
        ever |= info["is_success"]
    return {"success": bool(ever), "final_success": env.is_success(), "max_state_error": max(errors, default=0.0)}


def check_file(path: str | os.PathLike, demos: int | None = None) -> dict[str, Any]:
    """Replay checks on the first ``demos`` demos of a file: states, delta actions and absolute actions."""
    meta = env_meta_from_dataset(path)
    delta_env = RobomimicEnv(env_meta=meta, use_image_obs=False)
    abs_env = RobomimicEnv(env_meta=meta, use_image_obs=False, control_delta=False)
    import h5py

    with h5py.File(path, "r") as f:
        names = sorted(f["data"].keys(), key=lambda s: int(s[5:]))
    results = {}
    for name in names[:demos]:
        demo = load_demo(path, name)
        results[name] = {
            "states": replay_states(delta_env, demo),
            "delta": replay_actions(delta_env, demo),
            "abs": replay_actions(abs_env, demo, absolute=True) if ABS_ACTION_KEY in demo else None,
        }
    delta_env.close()
    abs_env.close()
    return results
