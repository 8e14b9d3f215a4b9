"""robomimic Lift and Can (PH): gymnasium envs built through robomimic's env utilities, scripted experts,
and demonstrations in robomimic's HDF5 layout (see ``docs/robomimic.md``).

Importing ``envs.robomimic`` registers ``fibpolicy/Lift-v0`` and ``fibpolicy/Can-v0`` (400-step limit,
the reference PH evaluation horizon); robosuite / robomimic themselves are imported only when an env is
built (``envs.robomimic._backend`` sets up OpenGL and robomimic 0.3.0's ``mujoco_py`` import first).
"""

import gymnasium as _gym

from envs.robomimic.env import (
    CAMERAS,
    DEFAULT_OBS_KEYS,
    IMAGE_KEYS,
    LOW_DIM_KEYS,
    MAX_EPISODE_STEPS,
    TASKS,
    RobomimicEnv,
    env_meta_from_dataset,
    make_env_meta,
    osc_pose_controller_config,
)

for _id, _task in (("fibpolicy/Lift-v0", "lift"), ("fibpolicy/Can-v0", "can")):
    if _id not in _gym.registry:
        _gym.register(
            id=_id,
            entry_point="envs.robomimic.env:RobomimicEnv",
            kwargs={"task": _task},
            max_episode_steps=MAX_EPISODE_STEPS,
        )

__all__ = [
    "CAMERAS",
    "DEFAULT_OBS_KEYS",
    "IMAGE_KEYS",
    "LOW_DIM_KEYS",
    "MAX_EPISODE_STEPS",
    "TASKS",
    "RobomimicEnv",
    "env_meta_from_dataset",
    "make_env_meta",
    "osc_pose_controller_config",
]
