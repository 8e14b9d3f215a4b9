"""Generate robomimic Lift / Can demonstrations with the scripted experts, in robomimic's own HDF5 layout.

    python -m envs.robomimic.demos --task lift --out data/lift_expert.hdf5 --episodes 200 --seed-start 0 --workers 2

The file is laid out like robomimic's v1.4.1 PH ``image.hdf5`` (``scripts/dataset_states_to_obs.py``):

- ``data`` attrs ``total`` (number of samples) and ``env_args`` (JSON: ``env_name``, ``type``,
  ``env_version``, ``env_kwargs``; ``EnvRobosuite.serialize()`` of the image env);
- ``data/demo_0 … demo_{N-1}`` (contiguous, in seed order), attrs ``num_samples`` and ``model_file``
  (the scene MJCF) and ``seed`` (ours); datasets ``states`` (n, D) flat ``[time, qpos, qvel]``
  *before* each action, ``actions`` (n, 7) delta OSC_POSE in [-1, 1], ``actions_abs`` (n, 7),
  ``rewards`` (n,), ``dones`` (n,) (done mode 2: 1 at success states and at the last step),
  ``obs/<key>`` and ``next_obs/<key>`` for every key robomimic returns, with the two 84 x 84 uint8
  camera images ``agentview_image`` and ``robot0_eye_in_hand_image``;
- ``mask/train`` and ``mask/valid`` (90 / 10, byte strings).

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
   ``robosuite_add_absolute_actions.py``); Diffusion Policy's ``image_abs.hdf5`` is the same file with
   ``actions`` replaced by ``actions_abs`` (:func:`write_abs_copy` makes one).

The file is written under a temporary name and renamed when complete; an existing file is replaced
only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from envs.parallel import ordered_map
from envs.robomimic.env import MAX_EPISODE_STEPS, RobomimicEnv, check_task, env_meta_from_dataset
from envs.robomimic.experts import ExpertConfig, run_expert

ABS_ACTION_KEY = "actions_abs"
VALID_RATIO = 0.1
MASK_SEED = 0


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


# -- writing -----------------------------------------------------------------------------------


class _Writer:
    """Appends demos to an open h5py file in robomimic's layout."""

    def __init__(self, f: Any, compress: bool) -> None:
        self.f = f
        self.data = f.create_group("data")
        self.compress = "gzip" if compress else None
        self.names: list[str] = []
        self.total = 0

    def add(self, demo: Demo) -> None:
        name = f"demo_{len(self.names)}"
        g = self.data.create_group(name)
        for key in ("actions", ABS_ACTION_KEY, "states", "rewards", "dones"):
            g.create_dataset(key, data=demo.data[key])
        for group, obs in (("obs", demo.obs), ("next_obs", demo.next_obs)):
            for k in sorted(obs):
                g.create_dataset(f"{group}/{k}", data=obs[k], compression=self.compress)
        g.attrs["model_file"] = demo.model_file
        g.attrs["num_samples"] = demo.length
        g.attrs["seed"] = demo.seed
        self.names.append(name)
        self.total += demo.length

    def close(self, env_args: dict[str, Any], extra_attrs: dict[str, Any]) -> None:
        self.data.attrs["total"] = self.total
        self.data.attrs["env_args"] = json.dumps(env_args, indent=4)
        for k, v in extra_attrs.items():
            self.data.attrs[k] = v
        train, valid = split_train_valid(self.names)
        mask = self.f.create_group("mask")
        mask.create_dataset("train", data=np.array(train, dtype="S"))
        mask.create_dataset("valid", data=np.array(valid, dtype="S"))


def split_train_valid(names: list[str], valid_ratio: float = VALID_RATIO, seed: int = MASK_SEED):
    """A seeded 90 / 10 split like robomimic's ``split_train_val.py`` (sorted demo names)."""
    n_valid = int(valid_ratio * len(names))
    perm = np.random.default_rng(seed).permutation(len(names))
    valid = sorted((names[i] for i in perm[:n_valid]), key=lambda s: int(s[5:]))
    train = sorted((names[i] for i in perm[n_valid:]), key=lambda s: int(s[5:]))
    return train, valid


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


def generate_demos(
    task: str,
    out: str | os.PathLike,
    episodes: int,
    seed_start: int = 0,
    workers: int | None = 1,
    keep_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_steps: int = MAX_EPISODE_STEPS,
    camera_size: int = 84,
    render_quality: str = "fast",
    compress: bool = False,
    config: ExpertConfig | None = None,
) -> dict[str, Any]:
    """Record ``episodes`` expert demos from seeds ``seed_start, …`` into a robomimic HDF5 file at ``out``.

    Only successful episodes are written unless ``keep_failed``; ``workers=None`` uses every core.
    Returns a summary (episodes written, success rate, mean length, samples, seconds, seconds per demo, path).
    """
    import h5py

    # Lazy: importing fibpolicy pulls torch (seconds); workers and env construction stay light.
    from fibpolicy.atomic import atomic_path

    task = check_task(task)
    if workers is None:  # the machine's cores
        workers = os.cpu_count() or 1
    if episodes < 1:
        raise ValueError(f"generate_demos: episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"generate_demos: workers must be >= 1, got {workers}")
    if max_steps < 1:
        raise ValueError(f"generate_demos: max_steps must be >= 1, got {max_steps}")
    out = Path(out)
    start = time.perf_counter()
    seeds = list(range(seed_start, seed_start + episodes))
    tasks = [(task, camera_size, max_steps, render_quality, config, s) for s in seeds]
    lengths: list[int] = []
    n_success = 0
    bar = tqdm(total=episodes, desc=f"{task} demos", unit="demo", disable=not progress, file=sys.stderr)
    try:
        with atomic_path(out, overwrite=overwrite, suffix=".hdf5") as tmp:
            with h5py.File(tmp, "w") as f:
                writer = _Writer(f, compress)
                for demo in _demos(tasks, workers):
                    lengths.append(demo.length)
                    n_success += demo.success
                    if demo.success or keep_failed:
                        writer.add(demo)
                    bar.update(1)
                    bar.set_postfix(success=f"{n_success / len(lengths):.0%}", samples=writer.total)
                env_args = _image_env_args(task, camera_size)
                writer.close(
                    env_args,
                    {
                        "generator": "envs.robomimic.demos (scripted expert)",
                        "abs_action_key": ABS_ACTION_KEY,
                        "render_quality": render_quality,
                    },
                )
    finally:
        bar.close()
        _close_recorder()
    seconds = time.perf_counter() - start
    return {
        "path": str(out),
        "task": task,
        "episodes": episodes,
        "episodes_written": len(writer.names),
        "successes": n_success,
        "success_rate": n_success / episodes,
        "mean_length": float(np.mean(lengths)),
        "samples": writer.total,
        "seconds": seconds,
        "seconds_per_demo": seconds / episodes,
    }


def _image_env_args(task: str, camera_size: int) -> dict[str, Any]:
    """``EnvRobosuite.serialize()`` of the image env, as robomimic writes ``env_args``."""
    if _RECORDER is not None and _RECORDER.task == task and _RECORDER.key[1] == camera_size:
        return _RECORDER.image_env.env_meta
    env = RobomimicEnv(task, use_image_obs=True, camera_size=camera_size)
    meta = env.env_meta
    env.close()
    return meta


def write_abs_copy(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Diffusion Policy's ``image_abs.hdf5``: a copy of ``src`` whose ``actions`` are the absolute ones."""
    import h5py

    from fibpolicy.atomic import atomic_path

    with atomic_path(dst, overwrite=overwrite) as tmp:
        with h5py.File(src, "r") as fin, h5py.File(tmp, "w") as fout:
            for key in fin:
                fin.copy(key, fout)
            for attr, value in fin.attrs.items():
                fout.attrs[attr] = value
            for name in fout["data"]:
                g = fout["data"][name]
                if ABS_ACTION_KEY not in g:
                    raise KeyError(f"{src}: data/{name} has no {ABS_ACTION_KEY!r}")
                abs_actions = g[ABS_ACTION_KEY][()]
                del g["actions"]
                g.create_dataset("actions", data=abs_actions)


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


def _format_summary(s: dict[str, Any]) -> str:
    return (
        f"wrote {s['path']}: {s['episodes_written']} of {s['episodes']} {s['task']} demos, "
        f"success rate {s['success_rate']:.1%}, mean length {s['mean_length']:.1f} steps, "
        f"{s['samples']} samples, {s['seconds']:.1f} s ({s['seconds_per_demo']:.2f} s/demo)"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m envs.robomimic.demos", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="lift or can")
    p.add_argument("--out", required=True, help="output HDF5 file, e.g. data/lift_expert.hdf5")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes (seeds) to run")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--keep-failed", action="store_true", help="also write episodes that did not succeed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS, help="step limit per episode (400)")
    p.add_argument("--camera-size", type=int, default=84, help="camera height and width (84)")
    p.add_argument("--render-quality", choices=("fast", "reference"), default="fast")
    p.add_argument("--compress", action="store_true", help="gzip the observations (robomimic --compress)")
    p.add_argument("--abs-copy", default=None, help="also write Diffusion Policy's image_abs.hdf5 layout here")
    p.add_argument("--check", type=int, default=0, metavar="N", help="replay-check the first N demos afterwards")
    args = p.parse_args(argv)
    try:
        summary = generate_demos(
            args.task,
            args.out,
            args.episodes,
            seed_start=args.seed_start,
            workers=args.workers,
            keep_failed=args.keep_failed,
            overwrite=args.overwrite,
            max_steps=args.max_steps,
            camera_size=args.camera_size,
            render_quality=args.render_quality,
            compress=args.compress,
        )
        if args.abs_copy:
            write_abs_copy(args.out, args.abs_copy, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_format_summary(summary))
    if args.check:
        for name, r in check_file(args.out, args.check).items():
            print(f"{name}: {json.dumps(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
