"""Policy evaluation by vectorised rollouts in simulation, and rollout videos."""

from .runner import EpisodeResult, EpisodeSpec, RolloutResult, RolloutRunner, protocol_episodes
from .video import read_mp4, write_mp4

__all__ = [
    "EpisodeResult",
    "EpisodeSpec",
    "RolloutResult",
    "RolloutRunner",
    "protocol_episodes",
    "read_mp4",
    "write_mp4",
]
