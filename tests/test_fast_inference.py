"""Fast inference: the coefficient loop samples what diffusers' step() samples, bf16 weights stay close and
leave the policy's own weights alone, the encoder runs once per window, CUDA graphs replay the eager result."""

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from fibpolicy.policy import DEFAULT_NOISE_SCHEDULER
from fibpolicy.policy.fast_inference import FastSampler, noise_draws, run_sampler, sampler_steps
from test_policy_diffusion import image_batch, image_policy, lowdim_batch, lowdim_policy

pytestmark = pytest.mark.usefixtures("one_thread")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,steps", [("ddpm", 100), ("ddpm", 10), ("ddim", 16), ("ddim", 1)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_coefficients_reproduce_diffusers_step(name, steps, prediction_type):
    cfg = {**DEFAULT_NOISE_SCHEDULER, "prediction_type": prediction_type}
    scheduler = DDPMScheduler(**cfg) if name == "ddpm" else DDIMScheduler(
        **{k: v for k, v in cfg.items() if k != "variance_type"}, set_alpha_to_one=True, steps_offset=0)
    table = sampler_steps(copy.deepcopy(scheduler), steps)
    scheduler.set_timesteps(steps)
    assert [s.timestep for s in table] == [int(t) for t in scheduler.timesteps]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 2, generator=gen)
    draws = 0
    for step in table:
        out = torch.randn(4, 16, 2, generator=gen)
        ref = scheduler.step(out, step.timestep, x, generator=torch.Generator().manual_seed(99)).prev_sample
        same_noise = torch.randn(1, 4, 16, 2, generator=torch.Generator().manual_seed(99))
        ours = run_sampler(lambda _x, _i: out, x, (step,), same_noise, prediction_type, 1.0)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        draws += step.sigma > 0
        x = ref
    assert draws == noise_draws(table) == (sum(int(t) > 0 for t in scheduler.timesteps) if name == "ddpm" else 0)


@pytest.mark.parametrize("scheduler,steps", [("ddpm", 100), ("ddim", 16)])
def test_fast_fp32_samples_what_predict_action_samples(scheduler, steps):
    policy = image_policy(inference_scheduler=scheduler, num_inference_steps=steps).eval()
    obs = image_batch(b=3)["obs"]
    want = policy.predict_action(obs, generator=5)
    fast = FastSampler(policy, weights="fp32")
    got = fast(obs, generator=5)
    torch.testing.assert_close(got["action_pred"], want["action_pred"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got["action"], want["action"], rtol=1e-4, atol=1e-3)
    assert fast.encoder is policy.obs_encoder  # fp32 uses the policy's own modules: later updates are seen


def test_bf16_weights_are_a_close_copy():
    policy = lowdim_policy(inference_scheduler="ddim", num_inference_steps=10).eval()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    obs = lowdim_batch(b=4)["obs"]
    want = policy.predict_action(obs, generator=1)["action_pred"]
    policy.enable_fast_inference("bf16", cuda_graph=False)
    got = policy.predict_action(obs, generator=1)["action_pred"]
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert 0 < rel(got, want) < 0.03  # bf16 rounding, not a different sample
    assert all(p.dtype == torch.bfloat16 for p in policy._fast.model.parameters())
    for key, value in policy.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    policy.set_inference("ddpm", 20)  # a new sampler rebuilds the fast path's coefficients
    assert len(policy._fast.steps) == 20 and policy._fast.weights == "bf16"
    policy.disable_fast_inference()
    policy.set_inference("ddim", 10)
    torch.testing.assert_close(policy.predict_action(obs, generator=1)["action_pred"], want)


def test_bf16_image_policy_runs_the_encoder_in_bf16():
    policy = image_policy(inference_scheduler="ddim", num_inference_steps=4).eval()
    obs = image_batch(b=2)["obs"]
    want = policy.predict_action(obs, generator=2)["action_pred"]
    fast = FastSampler(policy, weights="bf16", cuda_graph=False)
    dtypes = []
    handle = fast.encoder.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    got = fast(obs, generator=2)["action_pred"]
    handle.remove()
    assert dtypes == [torch.bfloat16]
    assert rel(got, want) < 0.05


@pytest.mark.parametrize("fast", [False, True])
def test_encoder_runs_once_per_window_not_per_denoising_step(fast):
    policy = image_policy(inference_scheduler="ddpm", num_inference_steps=20).eval()
    if fast:
        policy.enable_fast_inference("fp32", cuda_graph=False)
    calls = []
    encoder = policy._fast.encoder if fast else policy.obs_encoder
    encoder.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    unet_calls = []
    (policy._fast.model if fast else policy.model).register_forward_hook(lambda m, i, o: unet_calls.append(1))
    policy.predict_action(image_batch(b=3)["obs"], generator=0)
    assert calls == [3 * policy.n_obs_steps]  # one pass over the batch's two observation steps
    assert len(unet_calls) == 20


def test_select_action_goes_through_the_fast_sampler_and_acts_the_same():
    policy = lowdim_policy(inference_scheduler="ddim", num_inference_steps=8).eval()
    steps = [{k: v[:, 0] for k, v in lowdim_batch(b=2, seed=s)["obs"].items()} for s in range(10)]

    def act():
        policy.reset()
        torch.manual_seed(0)
        return torch.stack([policy.select_action(o, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(steps)])

    want = act()
    policy.enable_fast_inference("fp32")
    calls = []
    original = policy._fast.__class__.__call__
    policy._fast.__class__.__call__ = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        got = act()
    finally:
        policy._fast.__class__.__call__ = original
    assert calls  # the queue was refilled through the fast sampler
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_errors_and_copies():
    policy = lowdim_policy()
    with pytest.raises(ValueError, match="weights"):
        FastSampler(policy, weights="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            FastSampler(policy, cuda_graph=True)
    fast = FastSampler(policy.train(), weights="fp32")
    with pytest.raises(RuntimeError, match="eval mode"):
        fast(lowdim_batch(b=1)["obs"])
    policy.eval().enable_fast_inference("bf16")
    clone = copy.deepcopy(policy)  # an EMA copy: no graphs or weight copies travel
    assert clone._fast is None and policy._fast is not None
    assert all(p.dtype == torch.float32 for p in clone.parameters())
    with pytest.raises(ValueError, match="thresholding"):
        sampler_steps(DDPMScheduler(**{**DEFAULT_NOISE_SCHEDULER, "thresholding": True}), 10)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("scheduler,steps", [("ddpm", 100), ("ddim", 16)])
def test_cuda_graph_replays_the_eager_sample(scheduler, steps):
    policy = image_policy(inference_scheduler=scheduler, num_inference_steps=steps).cuda().eval()
    obs = {k: v.cuda() for k, v in image_batch(b=4)["obs"].items()}
    want = policy.predict_action(obs, generator=torch.Generator("cuda").manual_seed(4))["action_pred"]
    fast = FastSampler(policy, weights="fp32", cuda_graph=True)
    for seed in (4, 4, 11):  # capture, replay, and new noise through the same graph
        got = fast(obs, generator=torch.Generator("cuda").manual_seed(seed))["action_pred"]
        ref = want if seed == 4 else policy.predict_action(obs, generator=torch.Generator("cuda").manual_seed(seed))["action_pred"]
        assert rel(got, ref) < 1e-3
    assert fast.graph_scope == {4: "encoder+sampler"}
    bf16 = FastSampler(policy, weights="bf16", cuda_graph=True)
    assert rel(bf16(obs, generator=torch.Generator("cuda").manual_seed(4))["action_pred"], want) < 0.05
