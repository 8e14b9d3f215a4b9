"""Diffusion policy: loss and gradients, sampling in env units, DDPM / DDIM, determinism, rebuild, overfitting,
its own time window (the select_action queue)."""

from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import task_shape_meta
from fibpolicy.encoders import create_feature_encoder, create_resnet18_gn_encoder
from fibpolicy.policy import DiffusionUnetPolicy, LinearNormalizer

PUSHT_IMAGE_SHAPE_META = task_shape_meta("pusht_image")
PUSHT_LOWDIM_SHAPE_META = task_shape_meta("pusht_lowdim")
TINY_VIT = dict(model_name="vit_fib_tiny_patch16_224", patch_size=12, embed_dim=16, depth=1, num_heads=2)
TINY_UNET = dict(down_dims=(16, 32), diffusion_step_embed_dim=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def normalizer_for(shape_meta, low=100.0, high=400.0):
    rng = np.random.default_rng(0)
    data = {"action": rng.uniform(low, high, size=(200, 2))}
    for key, meta in shape_meta["obs"].items():
        if meta.get("type", "low_dim") == "low_dim":
            data[key] = rng.uniform(0, 512, size=(200, *meta["shape"]))
    normalizer = LinearNormalizer().fit(data)
    for key, meta in shape_meta["obs"].items():
        if meta.get("type") == "rgb":
            normalizer.set_image_range(key)
    return normalizer


def image_policy(**kwargs):
    torch.manual_seed(0)
    policy = DiffusionUnetPolicy(
        PUSHT_IMAGE_SHAPE_META, obs_encoder=dict(image_encoder=partial(create_feature_encoder, **TINY_VIT), crop_shape=84),
        **TINY_UNET, **kwargs
    )
    policy.set_normalizer(normalizer_for(PUSHT_IMAGE_SHAPE_META))
    return policy


def lowdim_policy(**kwargs):
    torch.manual_seed(0)
    policy = DiffusionUnetPolicy(PUSHT_LOWDIM_SHAPE_META, **TINY_UNET, **kwargs)
    policy.set_normalizer(normalizer_for(PUSHT_LOWDIM_SHAPE_META))
    return policy


def image_batch(b=3, steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": {"image": torch.rand(b, steps, 3, 96, 96, generator=g), "agent_pos": torch.rand(b, steps, 2, generator=g) * 512},
        "action": 100 + 300 * torch.rand(b, 16, 2, generator=g),
    }


def lowdim_batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": {"keypoint": torch.rand(b, 2, 18, generator=g) * 512, "agent_pos": torch.rand(b, 2, 2, generator=g) * 512},
        "action": 100 + 300 * torch.rand(b, 16, 2, generator=g),
    }


def test_reference_defaults_and_global_condition():
    with torch.device("meta"):
        policy = DiffusionUnetPolicy(PUSHT_IMAGE_SHAPE_META, obs_encoder=dict(image_encoder=create_resnet18_gn_encoder, crop_shape=84))
    assert policy.global_cond_dim == (64 + 2) * 2 == 132
    assert (policy.horizon, policy.n_obs_steps, policy.n_action_steps, policy.num_inference_steps) == (16, 2, 8, 100)
    cfg = policy.noise_scheduler.config
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.variance_type, cfg.clip_sample, cfg.prediction_type) == (
        100, "squaredcos_cap_v2", "fixed_small", True, "epsilon")
    unet = sum(p.numel() for p in policy.model.parameters())
    encoder = sum(p.numel() for p in policy.obs_encoder.parameters())
    assert unet == 251_511_938 and encoder == 11_197_088


def test_compute_loss_backpropagates_into_encoder_and_unet():
    policy = image_policy()
    loss = policy.compute_loss(image_batch(steps=16))  # full-horizon obs: the first n_obs_steps are used
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for module in (policy.model, policy.obs_encoder):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (p.grad for p in policy.obs_encoder.parameters()))


def test_predict_action_shapes_range_and_determinism():
    policy = image_policy(inference_scheduler="ddim", num_inference_steps=10).eval()
    obs = image_batch(b=2)["obs"]
    out = policy.predict_action(obs, generator=0)
    assert out["action"].shape == (2, 8, 2) and out["action_pred"].shape == (2, 16, 2)
    assert out["action"].dtype == torch.float32
    torch.testing.assert_close(out["action"], out["action_pred"][:, 1:9])
    # sample clipping keeps normalised actions in [-1, 1]: env units stay inside the fitted [100, 400]
    assert out["action_pred"].min() >= 100 - 1e-3 and out["action_pred"].max() <= 400 + 1e-3
    torch.testing.assert_close(policy.predict_action(obs, generator=0)["action"], out["action"])
    assert not torch.allclose(policy.predict_action(obs, generator=1)["action"], out["action"])
    uint8 = {"image": (obs["image"] * 255).round().to(torch.uint8), "agent_pos": obs["agent_pos"]}
    assert policy.predict_action(uint8, generator=0)["action"].shape == (2, 8, 2)


@pytest.mark.parametrize("scheduler, steps", [("ddpm", None), ("ddpm", 16), ("ddim", 10)])
def test_number_of_denoising_steps(scheduler, steps):
    policy = lowdim_policy(inference_scheduler=scheduler, num_inference_steps=steps).eval()
    calls = []
    policy.model.register_forward_hook(lambda *_: calls.append(1))
    obs = {k: v for k, v in lowdim_batch(b=2)["obs"].items()}
    out = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert len(calls) == (steps or 100)
    assert out["action_pred"].min() >= 100 - 1e-3 and out["action_pred"].max() <= 400 + 1e-3
    again = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again["action"], out["action"])


def test_set_inference_switches_sampler():
    policy = lowdim_policy().eval()
    policy.set_inference("ddim", 8)
    assert type(policy.inference_scheduler).__name__ == "DDIMScheduler" and policy.num_inference_steps == 8
    with pytest.raises(ValueError, match="num_inference_steps"):
        policy.set_inference("ddpm", 101)
    with pytest.raises(ValueError, match="ddpm"):
        policy.set_inference("euler")


def test_rebuild_from_the_task_config_and_safetensors(tmp_path):
    from hydra.utils import instantiate

    from conftest import compose

    overrides = ["task=pusht_image", "encoder=vit_fib_tiny", "+encoder.depth=1", "+encoder.embed_dim=16", "+encoder.num_heads=2",
                 "policy.down_dims=[16,32]", "policy.diffusion_step_embed_dim=16", "policy.inference_scheduler=ddim",
                 "policy.num_inference_steps=4"]
    cfg = compose("train", overrides).policy
    torch.manual_seed(0)
    policy = instantiate(cfg, _convert_="all")
    policy.set_normalizer(normalizer_for(PUSHT_IMAGE_SHAPE_META))
    policy.eval()
    assert policy.obs_encoder.crop_shapes["image"] == (84, 84)
    save_file(policy.state_dict(), tmp_path / "model.safetensors")
    rebuilt = instantiate(cfg, _convert_="all")
    assert len(rebuilt.normalizer) == 0
    result = rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    rebuilt.eval()
    obs = image_batch(b=1)["obs"]
    torch.testing.assert_close(rebuilt.predict_action(obs, generator=3)["action"], policy.predict_action(obs, generator=3)["action"])


def test_select_action_queue_follows_the_policys_time_window():
    policy = lowdim_policy(inference_scheduler="ddim", num_inference_steps=2, n_action_steps=3).eval()
    g = torch.Generator().manual_seed(1)
    steps = [{"keypoint": torch.rand(2, 18, generator=g) * 512, "agent_pos": torch.rand(2, 2, generator=g) * 512} for _ in range(7)]
    calls = []
    original = policy.predict_action

    def spy(obs, generator=None):
        calls.append({k: v.clone() for k, v in obs.items()})
        return original(obs, generator=generator)

    policy.predict_action = spy
    policy.reset()
    actions = [policy.select_action(o) for o in steps]
    assert [a.shape for a in actions] == [(2, 2)] * 7
    # a chunk every n_action_steps = 3 env steps, from the last n_obs_steps = 2 observations
    assert len(calls) == 3
    torch.testing.assert_close(calls[0]["keypoint"], torch.stack([steps[0]["keypoint"]] * 2, 1))  # first obs repeated
    torch.testing.assert_close(calls[1]["keypoint"], torch.stack([steps[2]["keypoint"], steps[3]["keypoint"]], 1))
    torch.testing.assert_close(calls[2]["agent_pos"], torch.stack([steps[5]["agent_pos"], steps[6]["agent_pos"]], 1))
    policy.reset()
    policy.select_action(steps[4])
    torch.testing.assert_close(calls[3]["keypoint"], torch.stack([steps[4]["keypoint"]] * 2, 1))  # history forgotten
    # the executed actions are the chunk's first n_action_steps
    torch.manual_seed(5)
    policy.reset()
    queued = [policy.select_action(steps[0]) for _ in range(3)]
    torch.manual_seed(5)
    chunk = original(calls[0])["action"]
    torch.testing.assert_close(torch.stack(queued, 1), chunk)


def test_overfits_a_single_batch():
    policy = lowdim_policy()
    batch = lowdim_batch(b=16)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=1e-6)

    def fixed_loss():
        state = torch.get_rng_state()
        torch.manual_seed(123)
        with torch.no_grad():
            value = policy.compute_loss(batch).item()
        torch.set_rng_state(state)
        return value

    torch.manual_seed(0)
    before = fixed_loss()
    for _ in range(150):
        optimizer.zero_grad()
        policy.compute_loss(batch).backward()
        optimizer.step()
    after = fixed_loss()
    assert after < 0.5 * before, (before, after)


def test_errors():
    policy = lowdim_policy().eval()
    obs = lowdim_batch(b=2)["obs"]
    with pytest.raises(KeyError, match=r"missing keys \['agent_pos'\]"):
        policy.predict_action({"keypoint": obs["keypoint"]})
    with pytest.raises(ValueError, match=r"obs 'keypoint': expected \(B, 2, 18\)"):
        policy.predict_action({**obs, "keypoint": obs["keypoint"][:, :1]})
    with pytest.raises(ValueError, match=r"'action': expected \(B, 16, 2\)"):
        policy.compute_loss({"obs": obs, "action": torch.zeros(2, 8, 2)})
    fresh = DiffusionUnetPolicy(PUSHT_LOWDIM_SHAPE_META, **TINY_UNET)
    with pytest.raises(RuntimeError, match="normalizer"):
        fresh.predict_action(obs)
    with pytest.raises(KeyError, match="keypoint"):
        fresh.set_normalizer(normalizer_for(PUSHT_IMAGE_SHAPE_META))
    with pytest.raises(ValueError, match="divisible"):
        DiffusionUnetPolicy(PUSHT_LOWDIM_SHAPE_META, horizon=10, down_dims=(16, 32, 64))
