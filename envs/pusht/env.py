"""``PushTEnv``: the reference PushT task as a gymnasium environment (physics, reset, reward, images)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.pusht import geometry as geo
from envs.pusht.keypoints import N_BLOCK_KEYPOINTS, block_keypoints
from envs.pusht.render import SceneRenderer
from envs.pusht.sim import PushTSim

OBS_TYPES = ("state", "pixels_agent_pos", "keypoints")
MAX_EPISODE_STEPS = 300


def reference_reset_state(seed: int | None) -> np.ndarray:
    """The reference's initial ``[ax, ay, bx, by, angle]`` for ``seed`` (legacy ``np.random.RandomState``)."""
    rs = np.random.RandomState(seed=seed)
    # Drawn in this order; the angle is Gaussian (randn * 2pi - pi), not uniform.
    return np.array(
        [
            rs.randint(50, 450),
            rs.randint(50, 450),
            rs.randint(100, 400),
            rs.randint(100, 400),
            rs.randn() * 2 * np.pi - np.pi,
        ]
    )


def _as_state(value: Any) -> np.ndarray:
    """Validate a ``reset_to_state`` option: five finite numbers [ax, ay, bx, by, angle]."""
    try:
        state = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"options['reset_to_state'] must be 5 numbers [ax, ay, bx, by, angle], got {value!r}") from err
    if state.shape != (5,) or not np.isfinite(state).all():
        raise ValueError(f"options['reset_to_state'] must be 5 finite numbers [ax, ay, bx, by, angle], got {value!r}")
    return state


class PushTEnv(gym.Env):
    """Push a T-shaped block onto the green goal T with a disc agent (the Diffusion Policy PushT task).

    Observation types:

    - ``"state"``: float64 (5,) ``[agent_x, agent_y, block_x, block_y, block_angle mod 2pi]``.
    - ``"pixels_agent_pos"``: ``{"pixels": float32 (3, S, S) in [0, 1], "agent_pos": float64 (2,)}``
      with S = ``render_size``. The reference image env calls the image ``image``; we use ``pixels``,
      the name gym-pusht and LeRobot use for the same array.
    - ``"keypoints"``: float64 (40,), the reference keypoint env's layout with every keypoint visible:
      9 block keypoints (x, y), the agent position, then a visibility mask of 20 ones.

    Actions are absolute agent targets in workspace pixels (float (2,), nominally [0, 512]); they are
    not clipped. ``render()`` (``render_mode="rgb_array"``) returns a ``video_size`` RGB frame with a red
    cross at the last action. ``legacy=True`` sets the block position before its angle on reset, as
    the public dataset and the reference evaluation do.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    reward_range = (0.0, 1.0)

    def __init__(
        self,
        obs_type: str = "pixels_agent_pos",
        render_size: int = 96,
        legacy: bool = True,
        render_mode: str | None = None,
        video_size: int | None = None,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"PushTEnv: unknown obs_type {obs_type!r}; expected one of {list(OBS_TYPES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"PushTEnv: unsupported render_mode {render_mode!r}; expected None or 'rgb_array'")
        for name, value in (("render_size", render_size), ("video_size", video_size)):
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"PushTEnv: {name} must be a positive int, got {value!r}")
        self.obs_type = obs_type
        self.render_size = int(render_size)
        self.video_size = int(video_size) if video_size is not None else self.render_size
        self.legacy = legacy
        self.render_mode = render_mode

        ws = float(geo.WINDOW_SIZE)
        self.action_space = spaces.Box(low=0.0, high=ws, shape=(2,), dtype=np.float64)
        if obs_type == "state":
            high = np.array([ws, ws, ws, ws, 2 * math.pi])
            self.observation_space = spaces.Box(low=np.zeros(5), high=high, dtype=np.float64)
        elif obs_type == "pixels_agent_pos":
            s = self.render_size
            self.observation_space = spaces.Dict(
                {
                    "pixels": spaces.Box(low=0.0, high=1.0, shape=(3, s, s), dtype=np.float32),
                    "agent_pos": spaces.Box(low=0.0, high=ws, shape=(2,), dtype=np.float64),
                }
            )
        else:
            n = 2 * (N_BLOCK_KEYPOINTS + 1)
            high = np.concatenate([np.full(n, ws), np.ones(n)])
            self.observation_space = spaces.Box(low=np.zeros(2 * n), high=high, dtype=np.float64)

        self.sim: PushTSim | None = None
        self._renderer: SceneRenderer | None = None
        self._frame_stale = True
        self._last_action: np.ndarray | None = None

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode: the reference's seeded initial state, or ``options["reset_to_state"]``."""
        super().reset(seed=seed)
        options = options or {}
        if options.get("reset_to_state") is not None:
            state = _as_state(options["reset_to_state"])
        else:
            if seed is None:  # keep unseeded resets reproducible from the env's own generator
                seed = int(self.np_random.integers(0, 2**31 - 1))
            state = reference_reset_state(seed)
        self.sim = PushTSim()
        self.sim.set_state(state, legacy=self.legacy)
        self._last_action = None
        self._frame_stale = True
        cov = geo.coverage(self.sim.block_pose)
        return self._get_obs(), self._get_info(cov)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Move the agent toward the target ``action`` for 0.1 s (10 physics steps); reward is goal coverage."""
        if self.sim is None:
            raise RuntimeError("PushTEnv.step() called before reset()")
        act = self._validate_action(action)
        self.sim.step(act)
        self._last_action = act
        self._frame_stale = True
        cov = geo.coverage(self.sim.block_pose)
        reward = geo.reward_from_coverage(cov)
        terminated = cov > geo.SUCCESS_THRESHOLD
        return self._get_obs(), reward, terminated, False, self._get_info(cov)

    def render(self) -> np.ndarray | None:
        """The current frame at ``video_size`` (uint8 HWC RGB) with the last action marked by a red cross."""
        if self.render_mode is None:
            gym.logger.warn("PushTEnv.render() called without a render_mode; pass render_mode='rgb_array'.")
            return None
        if self.sim is None:
            raise RuntimeError("PushTEnv.render() called before reset()")
        img = SceneRenderer.resize(self._canvas(), self.video_size)
        if self._last_action is not None:
            SceneRenderer.draw_action(img, self._last_action)
        return img

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _validate_action(action: Any) -> np.ndarray:
        if action is None:
            raise ValueError("PushTEnv.step: action is None; expected a target position [x, y]")
        try:
            act = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"PushTEnv.step: action must be 2 numbers [x, y], got {action!r}") from err
        if act.shape != (2,):
            raise ValueError(f"PushTEnv.step: action must have shape (2,) [x, y], got shape {act.shape}")
        if not np.isfinite(act).all():
            raise ValueError(f"PushTEnv.step: action must be finite, got {act.tolist()}")
        return act

    def _canvas(self) -> np.ndarray:
        """The 512 x 512 frame of the current state, drawn at most once per step."""
        if self._renderer is None:
            self._renderer = SceneRenderer()
        if self._frame_stale:
            self._renderer.draw(self.sim.block_pose, self.sim.agent_pos, self.sim.contacts)
            self._frame_stale = False
        return self._renderer.canvas

    def observation_image(self) -> np.ndarray:
        """The observation image as uint8 HWC (``render_size``), exactly what the public dataset stores."""
        return SceneRenderer.resize(self._canvas(), self.render_size)

    def _get_obs(self) -> Any:
        sim = self.sim
        if self.obs_type == "state":
            ax, ay = sim.agent.position
            bx, by = sim.block.position
            return np.array([ax, ay, bx, by, sim.block.angle % (2 * math.pi)])
        if self.obs_type == "pixels_agent_pos":
            img = self.observation_image()
            pixels = img.transpose(2, 0, 1).astype(np.float32) / 255
            return {"pixels": pixels, "agent_pos": sim.agent_pos}
        kps = block_keypoints(sim.block_pose).ravel()
        obs = np.concatenate([kps, sim.agent_pos])
        return np.concatenate([obs, np.ones_like(obs)])

    def _get_info(self, cov: float) -> dict[str, Any]:
        sim = self.sim
        return {
            "coverage": cov,
            "is_success": cov > geo.SUCCESS_THRESHOLD,
            "n_contacts": sim.n_contacts,
            "block_pose": sim.block_pose,
            "agent_pos": sim.agent_pos,
            "agent_vel": sim.agent_vel,
            "goal_pose": geo.GOAL_POSE.copy(),
        }
