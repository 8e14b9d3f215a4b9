"""EMA with the reference warm-up schedule: decay values, averaging, buffers, state dict."""

import pytest
import torch
import torch.nn as nn
from diffusers.training_utils import EMAModel as DiffusersEMA

from fibpolicy.policy import LinearNormalizer
from fibpolicy.training import EMAModel


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
        self.bn = nn.BatchNorm1d(2)
        self.normalizer = LinearNormalizer()


def test_decay_schedule_matches_the_reference_formula():
    ema = EMAModel(Net())
    decays = [ema.get_decay(k) for k in range(6)]
    assert decays[0] == decays[1] == 0.0  # the first two updates copy the weights
    for k in range(2, 6):
        assert decays[k] == pytest.approx(1 - (1 + (k - 1)) ** -0.75)
    assert decays[2] == pytest.approx(1 - 2 ** -0.75)
    assert ema.get_decay(10_000) == pytest.approx(1 - 10_000 ** -0.75)
    assert ema.get_decay(10**7) == 0.9999  # capped
    # diffusers' EMAModel uses the same formula one step ahead: its decay on call n is ours on call n + 1
    reference = DiffusersEMA(Net().parameters(), use_ema_warmup=True, inv_gamma=1.0, power=0.75, decay=0.9999)
    for k in range(1, 50):
        assert ema.get_decay(k) == pytest.approx(reference.get_decay(k))
    delayed = EMAModel(Net(), update_after_step=3)
    assert [delayed.get_decay(k) for k in range(5)] == [0.0] * 5


def test_step_averages_parameters_and_copies_the_rest():
    torch.manual_seed(0)
    model = Net()
    ema = EMAModel(model)
    assert not ema.averaged_model.training
    assert not any(p.requires_grad for p in ema.averaged_model.parameters())
    history = []
    expected = None
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.bn.running_mean.fill_(step)
        decay = ema.get_decay(step)
        current = model.linear.weight.detach().clone()
        expected = current if expected is None else decay * expected + (1 - decay) * current
        ema.step(model)
        history.append(ema.decay)
        torch.testing.assert_close(ema.averaged_model.linear.weight, expected)
        torch.testing.assert_close(ema.averaged_model.frozen, model.frozen)  # not trainable: copied
        torch.testing.assert_close(ema.averaged_model.bn.weight, model.bn.weight)  # BatchNorm: copied
        torch.testing.assert_close(ema.averaged_model.bn.running_mean, model.bn.running_mean)
    assert ema.optimization_step == 5 and history[:2] == [0.0, 0.0] and history[2] > 0
    assert not torch.allclose(ema.averaged_model.linear.weight, model.linear.weight)


def test_normalizer_fitted_after_the_copy_reaches_the_ema_model():
    model = Net()
    ema = EMAModel(model)
    model.normalizer.fit({"action": torch.rand(10, 2) * 100})
    ema.step(model)
    assert "action" in ema.averaged_model.normalizer
    torch.testing.assert_close(ema.averaged_model.normalizer["action"].scale, model.normalizer["action"].scale)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = Net()
    ema = EMAModel(model)
    for _ in range(4):
        with torch.no_grad():
            model.linear.weight.mul_(1.1)
        ema.step(model)
    restored = EMAModel(Net())
    restored.load_state_dict(ema.state_dict(include_weights=True))
    assert restored.optimization_step == 4 and restored.decay == ema.decay
    torch.testing.assert_close(restored.averaged_model.linear.weight, ema.averaged_model.linear.weight)
    model.linear.weight.data.mul_(1.1)
    ema.step(model)
    restored.step(model)
    torch.testing.assert_close(restored.averaged_model.linear.weight, ema.averaged_model.linear.weight)
