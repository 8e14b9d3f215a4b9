"""Simulation environments used by fibpolicy (they never import fibpolicy).

Importing ``envs`` registers the gymnasium environments:

- ``fibpolicy/PushT-v0``: :class:`envs.pusht.PushTEnv`, 300-step limit
  (``gymnasium.make("fibpolicy/PushT-v0", obs_type="state")``).
"""

import gymnasium as _gym

if "fibpolicy/PushT-v0" not in _gym.registry:
    _gym.register(id="fibpolicy/PushT-v0", entry_point="envs.pusht.env:PushTEnv", max_episode_steps=300)
