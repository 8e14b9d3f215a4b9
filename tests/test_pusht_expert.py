"""PushT scripted expert: it solves the task, and moves like a person at a mouse would."""

from __future__ import annotations

import numpy as np
import pytest

from envs.pusht import PushTEnv
from envs.pusht.expert import ExpertConfig, PushTExpert, pose_error, run_expert_episode


@pytest.mark.parametrize("seed", [0, 2, 100000])
def test_expert_solves_seed(seed):
    result = run_expert_episode(seed)
    assert result["success"], result
    assert result["max_coverage"] > 0.95 and result["steps"] < 300


def test_pose_error_is_zero_at_goal_only():
    from envs.pusht import GOAL_POSE

    assert pose_error(GOAL_POSE) == pytest.approx(0.0, abs=1e-9)
    assert pose_error(GOAL_POSE + [5.0, 0.0, 0.0]) == pytest.approx(5.0)
    assert pose_error(GOAL_POSE + [0.0, 0.0, 2 * np.pi]) == pytest.approx(0.0, abs=1e-9)


def test_expert_motion_is_continuous_and_bounded():
    cfg = ExpertConfig()
    env = PushTEnv(obs_type="state")
    expert = PushTExpert(cfg)
    _, info = env.reset(seed=4)
    prev_target, prev_pos = None, info["agent_pos"]
    for _ in range(120):
        target = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"])
        assert target.shape == (2,) and np.isfinite(target).all()
        assert (0 <= target).all() and (target <= 512).all()
        # The target leads the agent like a cursor does; it never jumps far from it.
        assert np.linalg.norm(target - info["agent_pos"]) <= cfg.max_target_offset + 1e-9
        if prev_target is not None:
            assert np.linalg.norm(target - prev_target) < 2 * cfg.max_target_offset
        prev_target = target
        _, _, done, _, info = env.step(target)
        assert np.linalg.norm(info["agent_pos"] - prev_pos) < 25.0  # at most 250 px/s
        prev_pos = info["agent_pos"]
        if done:
            break


def test_expert_reset_forgets_the_plan():
    env = PushTEnv(obs_type="state")
    expert = PushTExpert()
    _, info = env.reset(seed=0)
    first = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"])
    for _ in range(5):
        _, _, _, _, info = env.step(expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"]))
    expert.reset()
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"]), first)
