"""``RobomimicEnv``: robomimic's Lift and PickPlaceCan (robosuite 1.4.1) as gymnasium environments.

The env is built by robomimic's own ``EnvUtils.create_env_from_metadata`` from an ``env_meta`` dict
(the ``env_args`` JSON of a robomimic HDF5 file), so a public file's ``env_args`` recreates its env;
:func:`make_env_meta` writes the ``env_args`` of the public v1.4.1 PH image files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Any, Iterable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.robomimic import _backend

# Task name -> robosuite env name.
TASKS = {"lift": "Lift", "can": "PickPlaceCan"}
CAMERAS = ("agentview", "robot0_eye_in_hand")
IMAGE_KEYS = tuple(f"{c}_image" for c in CAMERAS)
# What the Diffusion Policy image tasks read (shape_meta), plus the object state.
DEFAULT_OBS_KEYS = IMAGE_KEYS + ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
LOW_DIM_KEYS = (
    "object",
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_eef_vel_lin",
    "robot0_eef_vel_ang",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)
MAX_EPISODE_STEPS = 400  # Diffusion Policy's PH evaluation horizon
RENDER_QUALITIES = ("fast", "reference")
ENV_VERSION = "1.4.1"


def osc_pose_controller_config(control_delta: bool = True) -> dict[str, Any]:
    """robosuite's default OSC_POSE controller, as the public robomimic files store it (legacy key names)."""
    return {
        "type": "OSC_POSE",
        "input_max": 1,
        "input_min": -1,
        "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
        "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
        "kp": 150,
        "damping": 1,
        "impedance_mode": "fixed",
        "kp_limits": [0, 300],
        "damping_limits": [0, 10],
        "position_limits": None,
        "orientation_limits": None,
        "uncouple_pos_ori": True,
        "control_delta": bool(control_delta),
        "interpolation": None,
        "ramp_ratio": 0.2,
    }


def check_task(task: str) -> str:
    """Normalise a task name ("lift", "can", or the robosuite names) or raise naming the value."""
    if isinstance(task, str):
        key = task.strip().lower()
        if key in TASKS:
            return key
        for name, env_name in TASKS.items():
            if key == env_name.lower():
                return name
    raise ValueError(f"unknown robomimic task {task!r}; expected one of {sorted(TASKS)} (or {sorted(TASKS.values())})")


def make_env_meta(
    task: str, cameras: bool = True, camera_size: int = 84, control_delta: bool = True
) -> dict[str, Any]:
    """The ``env_args`` of robomimic's v1.4.1 PH files for ``task`` (image file when ``cameras``, else low-dim)."""
    task = check_task(task)
    if not isinstance(camera_size, (int, np.integer)) or camera_size < 1:
        raise ValueError(f"camera_size must be a positive int, got {camera_size!r}")
    kwargs: dict[str, Any] = {
        "has_renderer": False,
        "has_offscreen_renderer": bool(cameras),
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": bool(cameras),
        "control_freq": 20,
        "controller_configs": osc_pose_controller_config(control_delta),
        "robots": ["Panda"],
        "camera_depths": False,
        "camera_heights": int(camera_size),
        "camera_widths": int(camera_size),
        "reward_shaping": False,
    }
    if cameras:
        kwargs["camera_names"] = list(CAMERAS)
        kwargs["render_gpu_device_id"] = 0
    return {"env_name": TASKS[task], "type": 1, "env_version": ENV_VERSION, "env_kwargs": kwargs}


def task_of_env_meta(env_meta: Mapping[str, Any]) -> str:
    """``"lift"`` or ``"can"`` for an ``env_meta`` dict, with a clear error for anything else."""
    if not isinstance(env_meta, Mapping) or "env_name" not in env_meta or "env_kwargs" not in env_meta:
        raise ValueError(f"env_meta must be a dict with 'env_name', 'type' and 'env_kwargs', got {env_meta!r:.200}")
    return check_task(env_meta["env_name"])


def _quiet() -> contextlib.AbstractContextManager:
    """Swallow robomimic's prints ("Created environment with name ...")."""
    return contextlib.redirect_stdout(io.StringIO())


def register_rgb_keys(keys: Iterable[str]) -> None:
    """Make robomimic's ObsUtils treat ``keys`` as rgb, without dropping what a caller registered.

    ``EnvRobosuite.get_observation`` only returns image keys that ObsUtils' global modality table
    lists as rgb; the table is process-wide and may be re-initialised by training code, so this is
    re-checked (cheaply) on every reset and step.
    """
    ObsUtils = _backend.import_robomimic()["ObsUtils"]
    keys = list(keys)
    if ObsUtils.OBS_KEYS_TO_MODALITIES is None:
        ObsUtils.initialize_obs_modality_mapping_from_dict({"rgb": keys})
        return
    for k in keys:
        if ObsUtils.OBS_KEYS_TO_MODALITIES.get(k) != "rgb":
            ObsUtils.OBS_KEYS_TO_MODALITIES[k] = "rgb"
            ObsUtils.OBS_MODALITIES_TO_KEYS.setdefault("rgb", [])
            if k not in ObsUtils.OBS_MODALITIES_TO_KEYS["rgb"]:
                ObsUtils.OBS_MODALITIES_TO_KEYS["rgb"].append(k)


@contextlib.contextmanager
def _numpy_seed(seed: int | None):
    """Run a block under ``np.random.seed(seed)`` and restore the global numpy RNG afterwards."""
    if seed is None:
        yield
        return
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _as_float_array(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be an array of numbers, got {value!r:.200}") from err


class RobomimicEnv(gym.Env):
    """robomimic Lift / PickPlaceCan through robomimic's env utilities, as a gymnasium env.

    - Observations: a dict with the robomimic keys ``obs_keys`` (default :data:`DEFAULT_OBS_KEYS`;
      ``"all"`` for every key robomimic returns), images uint8 HWC upright exactly as robomimic writes
      them to datasets, low-dim float64.
    - Actions: 7-D ``[pos 3, axis-angle 3, gripper]``: normalised deltas in [-1, 1] (OSC_POSE,
      ``control_delta=True``), or absolute world-frame ``grip_site`` targets in metres / radians with
      ``control_delta=False``. Gripper -1 opens, +1 closes.
    - ``reset(seed=s)`` follows the reference evaluation: ``np.random.seed(s)`` then robosuite's reset;
      the resulting state is cached, so a seed always gives the same initial state.
      ``reset(options={"state": flat_state, "model": xml})`` starts from a stored state (the model XML
      is optional and rebuilds the scene, e.g. Lift's cube size). ``hard_reset`` is off.
    - ``info["is_success"]`` is robosuite's ``_check_success()``; the reward is the sparse task reward.
      Episodes never terminate (as in robomimic) unless ``terminate_on_success``; a terminated episode
      is frozen until the next reset (steps repeat its last transition without simulating).
    - ``render_quality="fast"`` (default) renders without offscreen multisampling and reflections
      (several times faster on a CPU, small pixel differences, see docs/robomimic.md); ``"reference"``
      keeps MuJoCo's defaults.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str = "lift",
        env_meta: Mapping[str, Any] | None = None,
        use_image_obs: bool = True,
        obs_keys: Iterable[str] | str | None = None,
        control_delta: bool | None = None,
        camera_size: int | None = None,
        render_quality: str = "fast",
        hard_reset: bool = False,
        model_seed: int | None = 0,
        terminate_on_success: bool = False,
        render_mode: str | None = None,
        video_size: int = 256,
    ) -> None:
        if env_meta is None:
            self.task = check_task(task)
            env_meta = make_env_meta(self.task, cameras=use_image_obs, camera_size=camera_size or 84)
        else:
            self.task = task_of_env_meta(env_meta)
            env_meta = copy.deepcopy(dict(env_meta))
            if camera_size is not None:
                env_meta["env_kwargs"]["camera_heights"] = int(camera_size)
                env_meta["env_kwargs"]["camera_widths"] = int(camera_size)
        if render_quality not in RENDER_QUALITIES:
            raise ValueError(f"render_quality must be one of {RENDER_QUALITIES}, got {render_quality!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unsupported render_mode {render_mode!r}; expected None or 'rgb_array'")
        kw = env_meta["env_kwargs"]
        if control_delta is not None:
            kw["controller_configs"] = dict(kw["controller_configs"], control_delta=bool(control_delta))
        self.control_delta = bool(kw["controller_configs"].get("control_delta", True))
        if use_image_obs and not kw.get("camera_names"):
            kw["camera_names"] = list(CAMERAS)
        self.use_image_obs = bool(use_image_obs)
        self.camera_names = tuple(kw.get("camera_names") or ()) if use_image_obs else ()
        if isinstance(self.camera_names, str):
            self.camera_names = (self.camera_names,)
        self.image_keys = tuple(f"{c}_image" for c in self.camera_names)
        self.render_quality = render_quality
        self.render_mode = render_mode
        self.video_size = int(video_size)
        self.terminate_on_success = terminate_on_success

        mods = _backend.import_robomimic()
        self.gl_backend = _backend.GL_BACKEND
        register_rgb_keys(self.image_keys)
        with _quiet(), _numpy_seed(model_seed):
            self.rm_env = mods["EnvUtils"].create_env_from_metadata(
                env_meta=env_meta,
                render=False,
                render_offscreen=self.use_image_obs or render_mode is not None,
                use_image_obs=self.use_image_obs,
            )
        # Images as robomimic writes them to datasets: uint8 HWC, flipped upright, not CHW floats.
        self.rm_env.postprocess_visual_obs = False
        self.rs_env = self.rm_env.env  # the robosuite env
        self.rs_env.hard_reset = bool(hard_reset)
        robot = self.rs_env.robots[0]
        if robot.controller.use_delta != self.control_delta:
            raise RuntimeError(
                f"controller use_delta is {robot.controller.use_delta}, expected {self.control_delta} from env_meta"
            )
        self.env_meta = self.rm_env.serialize()
        self._seed_states: dict[int, np.ndarray] = {}
        self._ref_offsamples: int | None = None
        self._apply_render_settings()

        obs = self._observe()
        if obs_keys is None:
            obs_keys = [k for k in DEFAULT_OBS_KEYS if k in obs]
        elif obs_keys == "all":
            obs_keys = sorted(obs)
        else:
            obs_keys = list(obs_keys)
            missing = [k for k in obs_keys if k not in obs]
            if missing:
                raise ValueError(f"unknown observation keys {missing}; this env provides {sorted(obs)}")
        self.obs_keys = tuple(obs_keys)
        self.observation_space = spaces.Dict(
            {
                k: spaces.Box(0, 255, obs[k].shape, np.uint8)
                if k in self.image_keys
                else spaces.Box(-np.inf, np.inf, obs[k].shape, np.float64)
                for k in self.obs_keys
            }
        )
        self.action_dim = int(self.rm_env.action_dimension)
        if self.control_delta:
            self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), np.float64)
        else:
            low = np.full(self.action_dim, -np.inf)
            high = np.full(self.action_dim, np.inf)
            low[6:], high[6:] = -1.0, 1.0
            self.action_space = spaces.Box(low, high, dtype=np.float64)
        self.state_dim = int(self.rs_env.sim.get_state().flatten().shape[0])
        self._elapsed = 0
        self._final: tuple | None = None  # the terminating transition, repeated until the next reset

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode from ``seed`` (reference protocol), a stored state, or the global numpy RNG."""
        super().reset(seed=seed)
        options = options or {}
        # "states" (robomimic's key, as in get_state()) is accepted as an alias of "state".
        state = options.get("state", options.get("states"))
        model = options.get("model")
        unknown = set(options) - {"state", "states", "model"}
        if unknown:
            raise ValueError(f"reset: unknown options {sorted(unknown)}; expected 'state' and/or 'model'")
        self._make_current()
        if model is not None:
            if not isinstance(model, str) or "<mujoco" not in model:
                raise ValueError(f"reset: options['model'] must be a MuJoCo XML string, got {model!r:.100}")
            # robomimic rebuilds the scene from the XML (robosuite edit_model_xml), then sets the state.
            target = {"model": model}
            if state is not None:
                target["states"] = self._check_state(state)
            with _quiet():
                self.rm_env.reset_to(target)
            self._apply_render_settings()
        elif state is not None:
            flat = self._check_state(state)
            # A plain reset first clears the hidden controller / gripper state of the last episode.
            self.rm_env.reset()
            self.rm_env.reset_to({"states": flat})
        elif seed is not None:
            seed = int(seed)
            # With hard resets every reset rebuilds the model from the global RNG (Lift's cube size),
            # so a cached state could belong to another model: re-draw instead of reusing it.
            if seed in self._seed_states and not self.rs_env.hard_reset:
                self.rm_env.reset()
                self.rm_env.reset_to({"states": self._seed_states[seed]})
            else:
                np.random.seed(seed)
                self.rm_env.reset()
                self._seed_states[seed] = self.get_state()["states"]
        else:
            self.rm_env.reset()
        self._sync_controller()
        self._elapsed = 0
        self._final = None
        return self._select(self._observe()), self._info()

    def _sync_controller(self) -> None:
        """Refresh the controller's cached eef pose after ``reset_to``.

        robosuite's controllers cache the eef pose and refresh it only when their ``new_update`` flag
        is set; building the controller on reset clears the flag, so after ``reset_to`` the first
        action's goal would be computed from the pose *before* the state was set (a wrong first step
        when replaying a demo, the "high error at step 0" Diffusion Policy's conversion skips).
        """
        self.robot.controller.update(force=True)

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        """Apply one 20 Hz control step (25 physics steps).

        Once an episode has terminated (``terminate_on_success``), further steps until the next reset
        simulate nothing and repeat its last transition: a vector env that keeps stepping a finished
        episode alongside running ones then costs almost nothing for it.
        """
        act = self._check_action(action)
        if self._final is not None:
            return self._final
        self._make_current()
        register_rgb_keys(self.image_keys)
        obs, reward, _, _ = self.rm_env.step(act)
        self._elapsed += 1
        info = self._info()
        terminated = bool(self.terminate_on_success and info["is_success"])
        result = (self._select(obs), float(reward), terminated, False, info)
        if terminated:
            self._final = result
        return result

    def render(self) -> np.ndarray | None:
        """The ``agentview`` camera at ``video_size`` (uint8 HWC, upright)."""
        if self.render_mode is None:
            gym.logger.warn("RobomimicEnv.render() called without a render_mode; pass render_mode='rgb_array'.")
            return None
        self._make_current()
        return self.rm_env.render(
            mode="rgb_array", height=self.video_size, width=self.video_size, camera_name="agentview"
        ).copy()

    def close(self) -> None:
        """Free the simulator and renderer."""
        env = getattr(self, "rs_env", None)
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
            self.rs_env = None

    # -- robomimic-level helpers ---------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """``{"states": flat [time, qpos, qvel], "model": xml}``, as robomimic stores them."""
        state = np.array(self.rs_env.sim.get_state().flatten())
        return {"states": state, "model": self.model_xml()}

    def model_xml(self) -> str:
        """The scene's MJCF (``model_file``), with MuJoCo's default render quality even when tuned."""
        model = self.rs_env.sim.model
        if self._ref_offsamples is None:
            return model.get_xml()
        tuned = model.vis.quality.offsamples
        model.vis.quality.offsamples = self._ref_offsamples
        try:
            return model.get_xml()
        finally:
            model.vis.quality.offsamples = tuned

    def is_success(self) -> bool:
        """robosuite's task success test on the current state."""
        return bool(self.rm_env.is_success()["task"])

    def observation(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The current observation (all keys robomimic returns, or ``keys``)."""
        self._make_current()
        obs = self._observe()
        return obs if keys is None else {k: obs[k] for k in keys}

    @property
    def sim(self):
        """The robosuite ``MjSim``."""
        return self.rs_env.sim

    @property
    def robot(self):
        """The robosuite robot (``robot.controller`` is the OSC controller)."""
        return self.rs_env.robots[0]

    @property
    def elapsed_steps(self) -> int:
        """Steps since the last reset."""
        return self._elapsed

    # -- internals -----------------------------------------------------------------------------

    def _observe(self) -> dict[str, np.ndarray]:
        register_rgb_keys(self.image_keys)
        return self.rm_env.get_observation()

    def _select(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: obs[k] for k in self.obs_keys}

    def _info(self) -> dict[str, Any]:
        return {"is_success": self.is_success()}

    def _check_action(self, action: Any) -> np.ndarray:
        if action is None:
            raise ValueError(f"step: action is None; expected {self.action_dim} numbers")
        act = _as_float_array(action, "step: action")
        if act.shape != (self.action_dim,):
            raise ValueError(
                f"step: action must have shape ({self.action_dim},) [pos 3, rot 3, gripper], got shape {act.shape}"
            )
        if not np.isfinite(act).all():
            raise ValueError(f"step: action must be finite, got {act.tolist()}")
        return act

    def _check_state(self, state: Any) -> np.ndarray:
        flat = _as_float_array(state, "reset: options['state']").reshape(-1)
        n = self.rs_env.sim.get_state().flatten().shape[0]
        if flat.shape != (n,) or not np.isfinite(flat).all():
            raise ValueError(
                f"reset: options['state'] must be {n} finite numbers [time, qpos, qvel] for {self.task}, "
                f"got shape {np.shape(state)}"
            )
        return flat

    def _make_current(self) -> None:
        """Make this env's GL context current: robosuite never does, so two envs in one process would mix."""
        ctx = getattr(self.rs_env.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    def _apply_render_settings(self) -> None:
        """Apply ``render_quality`` to the current render context (robosuite makes a new one per scene)."""
        sim = self.rs_env.sim
        ctx = getattr(sim, "_render_context_offscreen", None)
        if ctx is None or self.render_quality == "reference" or getattr(ctx, "_fibpolicy_fast", False):
            return
        import mujoco

        ctx.gl_ctx.make_current()
        if sim.model.vis.quality.offsamples != 0:
            self._ref_offsamples = int(sim.model.vis.quality.offsamples)
            sim.model.vis.quality.offsamples = 0
            # The multisample buffer is allocated with the MjrContext: rebuild it.
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        ctx._fibpolicy_fast = True

    def __repr__(self) -> str:
        return f"RobomimicEnv(task={self.task!r}, control_delta={self.control_delta}, cameras={self.camera_names})"


def env_meta_from_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """``env_args`` of a robomimic HDF5 file, with an error naming the file when it is missing."""
    import h5py

    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise KeyError(f"{path}: no 'data' group; not a robomimic dataset")
        if "env_args" not in f["data"].attrs:
            raise KeyError(f"{path}: data.attrs has no 'env_args' (the JSON env metadata robomimic needs)")
        raw = f["data"].attrs["env_args"]
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: data.attrs['env_args'] is not valid JSON: {raw!r:.200}") from err
