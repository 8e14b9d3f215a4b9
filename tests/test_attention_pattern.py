"""The Fibottention pattern against the spec's worked examples and the release's rules."""

import random

import pytest
import torch

from fibpolicy.attention import (
    FibPattern,
    fibottention_mask,
    fibottention_offsets,
    head_windows,
    pattern_density,
    robot_fibottention_offsets,
    wythoff_pair,
)

VIT_B_OFFSETS = [
    [1, 2, 3, 5], [4, 7], [6, 10], [9, 15], [12, 20], [14, 23],
    [17, 28], [19, 31], [22, 36], [25, 41], [27, 44], [30, 49],
]


def test_wythoff_pairs_are_the_first_two_columns_of_the_wythoff_array():
    assert [wythoff_pair(i) for i in range(1, 6)] == [(1, 2), (4, 7), (6, 10), (9, 15), (12, 20)]
    # The README's int(i * phi * phi) without the inner floor would give (2, 4) for head 1.
    assert wythoff_pair(1) != (2, 4)


def test_vit_b16_offsets_match_the_worked_example():
    assert fibottention_offsets(196, 12) == VIT_B_OFFSETS


def test_windows_truncate_after_float_division():
    # The last head of ViT-B gets 64 (60 / 11 * 11 = 59.99...), not 65.
    assert head_windows(196, 12) == [5, 10, 15, 21, 26, 32, 37, 43, 48, 54, 59, 64]
    assert head_windows(196, 1) == [5]


def test_sequence_keeps_a_even_when_it_exceeds_the_window():
    # N = 30 -> w_max = 10: head 12 starts at (30, 49), both beyond its window; a is kept, b dropped.
    offsets = fibottention_offsets(30, 12)
    assert offsets[-1] == [30]
    assert all(o <= w for head, w in zip(offsets, head_windows(30, 12)) for o in head[1:])


def test_modified_variant_heads_one_to_three():
    offsets = fibottention_offsets(196, 12, modified=True)
    assert offsets[0] == [0, 1, 1, 2, 3, 5]  # main diagonal and a duplicate, kept as produced
    assert offsets[1] == [1, 3, 4, 7]
    assert offsets[2] == [2, 4, 6, 10]


def test_density_is_about_two_percent_for_vit_b16():
    mask = fibottention_mask(196, 12)
    assert mask.shape == (12, 197, 197) and mask.dtype == torch.bool
    assert pattern_density(mask) == pytest.approx(0.0199, abs=5e-4)
    assert pattern_density(mask, patches_only=False) == pytest.approx(0.0299, abs=5e-4)


def test_mask_diagonals_follow_the_offsets():
    mask = fibottention_mask(196, 12, num_prefix_tokens=1)
    block = mask[:, 1:, 1:]
    for h, offsets in enumerate(VIT_B_OFFSETS):
        diffs = {int(d) for d in (torch.nonzero(block[h])[:, 1] - torch.nonzero(block[h])[:, 0]).unique()}
        assert diffs == set(offsets) | {-o for o in offsets}
        assert not block[h].diagonal().any()
        assert torch.equal(block[h], block[h].T)
    # Offset 14 on a 14 x 14 grid is the patch directly below; offset 1 wraps across row ends.
    assert block[1, 0, 4] and block[0, 13, 14]


def test_main_diagonal_only_with_offset_zero_and_duplicates_counted_once():
    mask = fibottention_mask(196, 12, modified=True)
    block = mask[0, 1:, 1:]
    assert block.diagonal().all()
    n = 196
    expected = n + sum(2 * (n - o) for o in (1, 2, 3, 5))  # the duplicated 1 adds nothing
    assert int(block.sum()) == expected


def test_layer_shuffle_is_the_release_permutation_and_leaves_global_random_alone():
    for layer in range(12):
        expected = list(VIT_B_OFFSETS)
        random.seed(layer)
        random.shuffle(expected)
        state = random.getstate()
        assert fibottention_offsets(196, 12, layer=layer) == expected
        assert random.getstate() == state
    assert fibottention_offsets(196, 12, layer=0) != fibottention_offsets(196, 12, layer=1)


def test_layer_shuffle_permutes_mask_heads():
    base = fibottention_mask(196, 12)
    shuffled = fibottention_mask(196, 12, layer=5)
    order = list(range(12))
    random.Random(5).shuffle(order)
    assert torch.equal(shuffled, base[order])


def test_several_prefix_tokens():
    one = fibottention_mask(49, 4, num_prefix_tokens=1)
    three = fibottention_mask(49, 4, num_prefix_tokens=3)
    assert three.shape == (4, 52, 52)
    assert three[:, :3, :].all() and three[:, :, :3].all()
    assert torch.equal(three[:, 3:, 3:], one[:, 1:, 1:])
    none = fibottention_mask(49, 4, num_prefix_tokens=0)
    assert torch.equal(none, one[:, 1:, 1:])


def test_robot_preset_windows_are_n_and_heads_after_the_first_are_prefixed():
    offsets = robot_fibottention_offsets(100, 12)
    assert offsets[0] == [1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    assert offsets[1] == [1, 3, 4, 7, 11, 18, 29, 47, 76]
    for i, head in enumerate(offsets[1:], start=2):
        a, _ = wythoff_pair(i)
        assert head[:3] == [i - 1, a - (i - 1), a]
        assert max(head) <= 100 or head == [i - 1, a - (i - 1), a]
    random_order = list(offsets)
    random.Random(2).shuffle(random_order)
    assert robot_fibottention_offsets(100, 12, layer=2) == random_order
    mask = fibottention_mask(100, 12, preset="robot")
    assert pattern_density(mask) > pattern_density(fibottention_mask(100, 12))


def test_results_are_cached_per_argument_tuple():
    assert fibottention_mask(64, 4, layer=1) is fibottention_mask(64, 4, layer=1)
    assert fibottention_mask(64, 4, layer=1) is not fibottention_mask(64, 4, layer=2)
    first = fibottention_offsets(64, 4)
    first[0].append(999)  # callers get their own lists; the cache is not corrupted
    assert 999 not in fibottention_offsets(64, 4)[0]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_patches=196, num_heads=0), "num_heads"),
        (dict(num_patches=0, num_heads=12), "num_patches"),
        (dict(num_patches=196, num_heads=12, w_min=70, w_max=65), "w_min"),
        (dict(num_patches=196, num_heads=12, w_min=-1), "w_min"),
        (dict(num_patches=196, num_heads=12, w_max=-3), "w_max"),
        (dict(num_patches=196, num_heads=12, layer=-1), "layer"),
        (dict(num_patches=196, num_heads=12, modified="yes"), "modified"),
        (dict(num_patches=196.0, num_heads=12), "num_patches"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        fibottention_offsets(**kwargs)
    with pytest.raises(ValueError, match=words):
        fibottention_mask(**kwargs)


def test_bad_mask_and_preset_arguments():
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        fibottention_mask(196, 12, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="preset"):
        fibottention_mask(196, 12, preset="nope")
    with pytest.raises(ValueError, match="robot"):
        FibPattern(num_heads=12, preset="robot", modified=True)
