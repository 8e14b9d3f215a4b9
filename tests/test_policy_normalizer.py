"""Linear normaliser: limits / gaussian / image / identity, constant dimensions, state-dict round trips."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from fibpolicy.policy import LinearNormalizer


def fitted():
    rng = np.random.default_rng(0)
    data = {
        "action": rng.uniform([100, 50], [400, 500], size=(500, 2)).astype(np.float32),
        "agent_pos": np.concatenate([rng.uniform(0, 512, (500, 1)), np.full((500, 1), 7.0)], 1).astype(np.float32),
    }
    normalizer = LinearNormalizer().fit(data)
    normalizer.set_image_range("image")
    return normalizer, data


def test_limits_maps_train_min_max_to_minus_one_one():
    normalizer, data = fitted()
    action = torch.from_numpy(data["action"])
    out = normalizer["action"].normalize(action)
    torch.testing.assert_close(out.min(0).values, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(out.max(0).values, torch.tensor([1.0, 1.0]))
    lo, hi = action.min(0).values, action.max(0).values
    torch.testing.assert_close(normalizer["action"].normalize((lo + hi) / 2), torch.zeros(2), atol=1e-5, rtol=0)


def test_round_trip_and_batch_shapes():
    normalizer, data = fitted()
    x = {"action": torch.from_numpy(data["action"][:48]).reshape(3, 16, 2), "image": torch.rand(3, 2, 3, 8, 8)}
    y = normalizer.normalize(x)
    back = normalizer.unnormalize(y)
    assert y["action"].shape == (3, 16, 2) and y["image"].shape == (3, 2, 3, 8, 8)
    torch.testing.assert_close(back["action"], x["action"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(back["image"], x["image"])
    assert y["image"].min() >= -1 and y["image"].max() <= 1
    torch.testing.assert_close(normalizer["image"].normalize(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_constant_dimension_is_safe():
    normalizer, data = fitted()
    pos = torch.from_numpy(data["agent_pos"])
    out = normalizer["agent_pos"].normalize(pos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1], torch.zeros(500))  # the constant maps to the middle, scale 1
    assert normalizer["agent_pos"].scale[1] == 1.0
    torch.testing.assert_close(normalizer["agent_pos"].unnormalize(out), pos, rtol=1e-6, atol=1e-4)


def test_gaussian_and_identity_modes():
    data = np.random.default_rng(1).normal(3.0, 2.0, size=(2000, 4))
    normalizer = LinearNormalizer().fit({"x": data, "q": data}, mode={"x": "gaussian", "q": "identity"})
    out = normalizer["x"].normalize(torch.from_numpy(data).float())
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    q = torch.randn(5, 4)
    torch.testing.assert_close(normalizer["q"].normalize(q), q)
    normalizer.set_identity("rot6d", 6)
    torch.testing.assert_close(normalizer["rot6d"].unnormalize(torch.ones(2, 6)), torch.ones(2, 6))


def test_state_dict_round_trip_into_an_empty_normalizer(tmp_path):
    normalizer, data = fitted()
    save_file(normalizer.state_dict(), tmp_path / "n.safetensors")
    restored = LinearNormalizer()
    restored.load_state_dict(load_file(tmp_path / "n.safetensors"))
    assert sorted(restored.keys()) == ["action", "agent_pos", "image"]
    x = {"action": torch.from_numpy(data["action"]), "agent_pos": torch.from_numpy(data["agent_pos"])}
    for key, value in normalizer.normalize(x).items():
        torch.testing.assert_close(restored.normalize(x)[key], value)
    torch.testing.assert_close(restored["action"].input_max, normalizer["action"].input_max)


def test_loads_as_a_submodule_of_a_larger_model():
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 2)
            self.normalizer = LinearNormalizer()

    source = Holder()
    source.normalizer.load_state_dict(fitted()[0].state_dict())
    target = Holder()
    result = target.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(target.normalizer["action"].offset, source.normalizer["action"].offset)


def test_errors():
    normalizer, _ = fitted()
    with pytest.raises(KeyError, match="no key 'nope'"):
        normalizer.normalize({"nope": torch.zeros(2)})
    with pytest.raises(ValueError, match="last dimension of 2"):
        normalizer["action"].normalize(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        LinearNormalizer().fit({"x": np.zeros((3, 2))}, mode="minmax")
    with pytest.raises(ValueError, match="empty data"):
        LinearNormalizer().fit({"x": np.zeros((0, 2))})
