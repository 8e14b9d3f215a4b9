"""PushT: a faithful, fast re-implementation of the Diffusion Policy PushT task, a scripted expert and
a demonstration writer (see ``docs/pusht.md``)."""

from envs.pusht.env import MAX_EPISODE_STEPS, OBS_TYPES, PushTEnv, reference_reset_state
from envs.pusht.geometry import GOAL_POSE, SUCCESS_THRESHOLD, coverage
from envs.pusht.keypoints import block_keypoints, local_keypoints

__all__ = [
    "GOAL_POSE",
    "MAX_EPISODE_STEPS",
    "OBS_TYPES",
    "SUCCESS_THRESHOLD",
    "PushTEnv",
    "block_keypoints",
    "coverage",
    "local_keypoints",
    "reference_reset_state",
]
