"""Sequence sampler: reference window arithmetic, edge-repeat padding, first-k loading, episode split."""

import numpy as np
import pytest

from fibpolicy.data import ReplayBuffer, SequenceSampler, create_indices, downsample_mask, get_val_mask, split_episodes


def reference_indices(episode_ends, horizon, mask, pad_before, pad_after):
    """The reference implementation's loop, written out literally."""
    pad_before = min(max(pad_before, 0), horizon - 1)
    pad_after = min(max(pad_after, 0), horizon - 1)
    rows = []
    for i in range(len(episode_ends)):
        if not mask[i]:
            continue
        start_idx = 0 if i == 0 else episode_ends[i - 1]
        length = episode_ends[i] - start_idx
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            buffer_start = max(idx, 0) + start_idx
            buffer_end = min(idx + horizon, length) + start_idx
            start_offset = buffer_start - (idx + start_idx)
            end_offset = (idx + horizon + start_idx) - buffer_end
            rows.append([buffer_start, buffer_end, start_offset, horizon - end_offset])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def buffer_of(lengths):
    ends = np.cumsum(lengths)
    n = int(ends[-1])
    rows = np.arange(n)
    data = {"step": rows[:, None].astype(np.float32), "img": np.repeat(rows, 4).reshape(n, 2, 2).astype(np.uint8)}
    return ReplayBuffer(data, ends)


@pytest.mark.parametrize("seed", range(6))
def test_indices_match_the_reference_loop(seed):
    rng = np.random.default_rng(seed)
    ends = np.cumsum(rng.integers(1, 40, size=rng.integers(1, 8)))
    horizon = int(rng.integers(1, 20))
    mask = rng.random(len(ends)) < 0.7
    pad_before, pad_after = int(rng.integers(0, 25)), int(rng.integers(0, 25))
    np.testing.assert_array_equal(
        create_indices(ends, horizon, mask, pad_before, pad_after),
        reference_indices(ends, horizon, mask, pad_before, pad_after),
    )


def test_window_count_per_episode():
    # start indices run from -pad_before to L - horizon + pad_after: L - 16 + 7 + 1 + 1 = L - 7 windows
    lengths = [3, 8, 10, 40]
    sampler = SequenceSampler(buffer_of(lengths), horizon=16, pad_before=1, pad_after=7)
    assert len(sampler) == sum(max(0, n - 7) for n in lengths) == 1 + 3 + 33
    no_pad = SequenceSampler(buffer_of(lengths), horizon=16)
    assert len(no_pad) == 40 - 16 + 1


def test_edge_frames_are_repeated():
    lengths = [10, 12]
    sampler = SequenceSampler(buffer_of(lengths), horizon=16, pad_before=1, pad_after=7)
    windows = [sampler.sample_sequence(i)["step"][:, 0] for i in range(len(sampler))]
    assert len(windows) == 3 + 5
    # first window of episode 0 starts one step before the episode: frame 0 repeated
    np.testing.assert_array_equal(windows[0], [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9])
    # the last window of an episode runs pad_after = 7 steps past its end: the last frame repeated, never
    # frames of the next episode
    np.testing.assert_array_equal(windows[2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9])
    np.testing.assert_array_equal(windows[3], [10, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 21, 21, 21])
    np.testing.assert_array_equal(windows[-1], [13, 14, 15, 16, 17, 18, 19, 20, 21, 21, 21, 21, 21, 21, 21, 21])
    # every window: position p holds episode row clip(start + p, 0, L - 1)
    ends = np.cumsum(lengths)
    for window, (b0, b1, s0, s1) in zip(windows, sampler.indices):
        episode = int(np.searchsorted(ends, b0, side="right"))
        ep_start = 0 if episode == 0 else ends[episode - 1]
        start = b0 - ep_start - s0
        np.testing.assert_array_equal(window, ep_start + np.clip(start + np.arange(16), 0, lengths[episode] - 1))


def test_first_k_reads_only_the_obs_steps():
    buffer = buffer_of([5, 20])
    full = SequenceSampler(buffer, horizon=16, pad_before=1, pad_after=7)
    first = SequenceSampler(buffer, horizon=16, pad_before=1, pad_after=7, key_first_k={"img": 2})
    assert len(full) == len(first)
    for i in range(len(full)):
        a, b = full.sample_sequence(i), first.sample_sequence(i)
        assert b["img"].shape == (2, 2, 2) and b["step"].shape == (16, 1)
        np.testing.assert_array_equal(b["img"], a["img"][:2])
        np.testing.assert_array_equal(b["step"], a["step"])


def test_samples_are_copies_and_only_from_masked_episodes():
    buffer = buffer_of([20, 20, 20])
    sampler = SequenceSampler(buffer, horizon=16, pad_before=1, pad_after=7, episode_mask=np.array([False, True, False]))
    values = np.concatenate([sampler.sample_sequence(i)["step"][:, 0] for i in range(len(sampler))])
    assert values.min() >= 20 and values.max() < 40
    sampler.sample_sequence(0)["step"][:] = -1
    assert buffer["step"].min() == 0
    empty = SequenceSampler(buffer, horizon=16, episode_mask=np.zeros(3, bool))
    assert len(empty) == 0


def test_split_is_the_reference_split_and_deterministic():
    train, val = split_episodes(206, val_ratio=0.02, max_train_episodes=90, seed=42)
    assert val.sum() == 4 and train.sum() == 90 and not (train & val).any()
    # reference: default_rng(seed).choice(n, round(n * ratio)) for validation, then a fresh default_rng(seed)
    # choosing max_n of the remaining episode indices
    expected_val = np.random.default_rng(42).choice(206, size=4, replace=False)
    np.testing.assert_array_equal(np.nonzero(val)[0], np.sort(expected_val))
    remaining = np.nonzero(~val)[0]
    expected_train = remaining[np.random.default_rng(42).choice(len(remaining), size=90, replace=False)]
    np.testing.assert_array_equal(np.nonzero(train)[0], np.sort(expected_train))
    again = split_episodes(206, val_ratio=0.02, max_train_episodes=90, seed=42)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    other = split_episodes(206, val_ratio=0.02, max_train_episodes=90, seed=0)
    assert not np.array_equal(other[1], val)


def test_split_edge_cases():
    assert get_val_mask(10, 0.0).sum() == 0
    assert get_val_mask(10, 0.01).sum() == 1  # at least one validation episode
    assert get_val_mask(3, 0.99).sum() == 2  # and at least one left for training
    mask = np.array([True, False, True, True])
    np.testing.assert_array_equal(downsample_mask(mask, None), mask)
    np.testing.assert_array_equal(downsample_mask(mask, 5), mask)
    small = downsample_mask(mask, 2, seed=1)
    assert small.sum() == 2 and not (small & ~mask).any()
    with pytest.raises(ValueError, match="at least 2 episodes"):
        get_val_mask(1, 0.5)
