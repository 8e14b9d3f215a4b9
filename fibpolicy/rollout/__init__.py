"""Policy evaluation by vectorised rollouts in simulation."""

from .evaluator import RolloutEvaluator, map_env_obs
from .runner import EpisodeResult, EpisodeSpec, RolloutResult, RolloutRunner, protocol_episodes

__all__ = [
    "EpisodeResult",
    "EpisodeSpec",
    "RolloutEvaluator",
    "RolloutResult",
    "RolloutRunner",
    "map_env_obs",
    "protocol_episodes",
]
