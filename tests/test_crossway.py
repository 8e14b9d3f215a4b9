"""Crossway Diffusion: the decoder trains from the U-Net bottleneck and never runs at inference."""

import pytest
import torch
from conftest import compose
from hydra.utils import instantiate

from fibpolicy.policy import CrosswayDecoder, CrosswayDiffusionUnetPolicy, LinearNormalizer

SMALL = ["policy=diffusion_unet_crossway", "encoder=vit_fib_tiny", "+encoder.depth=1", "policy.down_dims=[32,64,128]"]


def _policy():
    cfg = compose("train", SMALL)
    policy = instantiate(cfg.policy)
    normalizer = LinearNormalizer().fit({"action": torch.rand(100, 2) * 500, "agent_pos": torch.rand(100, 2) * 500})
    normalizer.set_image_range("image")
    policy.set_normalizer(normalizer)
    return policy


def _batch(n=3):
    return {"obs": {"image": torch.rand(n, 2, 3, 96, 96), "agent_pos": torch.rand(n, 2, 2) * 500},
            "action": torch.rand(n, 16, 2) * 500}


def test_the_decoder_receives_gradients_and_the_loss_adds_its_weighted_part():
    torch.manual_seed(0)
    policy = _policy()
    assert isinstance(policy, CrosswayDiffusionUnetPolicy) and policy.reconstruction_weight == 0.1
    out = policy.compute_loss(_batch())
    assert out["loss"].item() == pytest.approx(out["diffusion_loss"].item() + 0.1 * out["reconstruction_loss"].item(), rel=1e-5)
    out["loss"].backward()
    grads = [p.grad for p in policy.decoder.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    # the reconstruction reaches the image encoder only through the U-Net, whose bottleneck it shapes
    assert all(p.grad is not None for p in policy.model.mid_modules.parameters())


def test_the_decoder_is_absent_at_inference():
    policy = _policy().eval()
    calls = []
    policy.decoder.register_forward_hook(lambda *a: calls.append(1))
    obs = {k: v for k, v in _batch(2)["obs"].items()}
    action = policy.predict_action(obs, generator=0)["action"]
    assert action.shape == (2, 8, 2) and calls == []
    policy.train()
    policy.compute_loss(_batch(2))
    assert calls == [1]


def test_reconstructions_have_each_key_shape_and_bad_widths_are_refused():
    meta = {"obs": {"image": {"shape": [3, 20, 28], "type": "rgb"}, "pos": {"shape": [5], "type": "low_dim"}},
            "action": {"shape": [2]}}
    decoder = CrosswayDecoder(meta, bottleneck_dim=64, n_obs_steps=2)
    out = decoder(torch.randn(4, 64))
    assert out["image"].shape == (4, 2, 3, 20, 28) and out["pos"].shape == (4, 2, 5)
    for shape in ([3, 96, 96], [3, 84, 84], [1, 1, 1]):
        meta["obs"]["image"]["shape"] = shape
        decoder = CrosswayDecoder(meta, bottleneck_dim=64, n_obs_steps=2)
        sizes = []
        for stage in decoder.images["image"].stages:
            stage.register_forward_hook(lambda module, args, output: sizes.append(tuple(output.shape[-2:])))
        assert decoder(torch.randn(3, 64))["image"].shape == (3, 2, *shape)
        # every map is at most the image's size: the decoder never works above the resolution it reconstructs
        assert sizes[-1] == tuple(shape[1:]) and all(max(s) <= max(shape[1:]) for s in sizes)
    with pytest.raises(ValueError, match="divisible by 4 x n_obs_steps"):
        CrosswayDecoder(meta, bottleneck_dim=60, n_obs_steps=2)
