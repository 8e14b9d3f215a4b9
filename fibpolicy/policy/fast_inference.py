"""Fast action sampling: the scheduler's update as fixed per-step coefficients, bf16 weights, CUDA graphs.

diffusers' ``step()`` reads the schedule on the host at every denoising step (``t > 0``, the position of
``t`` in the timestep list), so on a GPU each step waits for the device and launches its kernels one by
one. The schedule does not depend on the sample, so it is read once here: for every step of the
inference scheduler (``DDPMScheduler`` or ``DDIMScheduler`` with ``eta = 0``) a ``SamplerStep`` holds
the plain numbers of its update,

    x0     = clip(sqrt_alpha^-1 * (x - sqrt_one_minus_alpha * eps))      (epsilon prediction)
    x_prev = coef_x0 * x0 + coef_sample * x + coef_eps * eps + sigma * z,

and the whole loop runs without a host round trip. ``FastSampler`` adds, for inference only, the
weights in bf16 (a copy; the policy keeps its own) and, on CUDA, the observation encoder plus the whole
loop captured as one CUDA graph per batch size, replayed with fresh inputs. Noise is drawn outside the
graph in the order diffusers draws it (the initial sample, then one draw per DDPM step with ``t > 0``),
so with the same generator the fast path samples what ``DiffusionUnetPolicy.predict_action`` samples
(the tests pin this against diffusers' own ``step()``). The encoder runs once per observation window,
never per denoising step, on every path.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from diffusers import DDIMScheduler, DDPMScheduler

__all__ = ["FAST_WEIGHTS", "FastSampler", "SamplerStep", "run_sampler", "sampler_steps"]

FAST_WEIGHTS = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class SamplerStep:
    """One denoising step's timestep and update coefficients (see the module docstring)."""

    timestep: int
    sqrt_alpha: float
    sqrt_one_minus_alpha: float
    coef_x0: float
    coef_sample: float
    coef_eps: float
    sigma: float


def sampler_steps(scheduler: DDPMScheduler | DDIMScheduler, num_inference_steps: int) -> tuple[SamplerStep, ...]:
    """The per-step coefficients of ``scheduler.step()`` after ``set_timesteps(num_inference_steps)``."""
    cfg = scheduler.config
    if cfg.thresholding:
        raise ValueError("the fast sampler does not implement dynamic thresholding (scheduler thresholding=True)")
    if isinstance(scheduler, DDPMScheduler) and cfg.variance_type not in ("fixed_small", "fixed_large"):
        raise ValueError(f"the fast sampler supports variance_type fixed_small / fixed_large, got {cfg.variance_type!r}")
    scheduler.set_timesteps(num_inference_steps)
    alphas = scheduler.alphas_cumprod.double()
    timesteps = [int(t) for t in scheduler.timesteps]
    is_ddim = isinstance(scheduler, DDIMScheduler)
    steps = []
    for index, t in enumerate(timesteps):
        if is_ddim:
            prev = t - cfg.num_train_timesteps // num_inference_steps
            a_prev = float(alphas[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        else:  # DDPM: the next timestep of the list, -1 after the last
            prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
            a_prev = float(alphas[prev]) if prev >= 0 else 1.0
        a_t = float(alphas[t])
        if is_ddim:  # eta = 0: deterministic
            coefs = dict(coef_x0=math.sqrt(a_prev), coef_sample=0.0, coef_eps=math.sqrt(1.0 - a_prev), sigma=0.0)
        else:
            current_alpha = a_t / a_prev
            current_beta = 1.0 - current_alpha
            variance = 0.0
            if t > 0:
                small = max((1.0 - a_prev) / (1.0 - a_t) * current_beta, 1e-20)
                variance = small if cfg.variance_type == "fixed_small" else current_beta
            coefs = dict(
                coef_x0=math.sqrt(a_prev) * current_beta / (1.0 - a_t),
                coef_sample=math.sqrt(current_alpha) * (1.0 - a_prev) / (1.0 - a_t),
                coef_eps=0.0, sigma=math.sqrt(variance),
            )
        steps.append(SamplerStep(timestep=t, sqrt_alpha=math.sqrt(a_t), sqrt_one_minus_alpha=math.sqrt(1.0 - a_t), **coefs))
    return tuple(steps)


def noise_draws(steps: tuple[SamplerStep, ...]) -> int:
    """How many noise tensors a run of ``steps`` draws after the initial sample."""
    return sum(1 for s in steps if s.sigma > 0.0)


def run_sampler(
    denoise: Callable[[torch.Tensor, int], torch.Tensor],
    sample: torch.Tensor,
    steps: tuple[SamplerStep, ...],
    noise: torch.Tensor | None,
    prediction_type: str = "epsilon",
    clip_range: float | None = 1.0,
) -> torch.Tensor:
    """Denoise ``sample`` (float32) through ``steps``; ``denoise(x, step_index)`` is the model's output and
    ``noise`` stacks the ``noise_draws(steps)`` variance draws."""
    draw = 0
    x = sample
    for index, step in enumerate(steps):
        out = denoise(x, index).to(x.dtype)
        if prediction_type == "epsilon":
            x0, eps = (x - step.sqrt_one_minus_alpha * out) / step.sqrt_alpha, out
        elif prediction_type == "sample":
            x0, eps = out, (x - step.sqrt_alpha * out) / step.sqrt_one_minus_alpha
        elif prediction_type == "v_prediction":
            x0 = step.sqrt_alpha * x - step.sqrt_one_minus_alpha * out
            eps = step.sqrt_alpha * out + step.sqrt_one_minus_alpha * x
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        if clip_range is not None:
            x0 = x0.clamp(-clip_range, clip_range)
        nxt = step.coef_x0 * x0
        if step.coef_sample:
            nxt = nxt + step.coef_sample * x
        if step.coef_eps:
            nxt = nxt + step.coef_eps * eps
        if step.sigma > 0.0:
            nxt = nxt + step.sigma * noise[draw]
            draw += 1
        x = nxt
    return x


class _Graph:
    """One captured encoder + sampling loop for a fixed batch size (static inputs, one static output)."""

    def __init__(self, run: Callable[..., torch.Tensor], nobs: Mapping[str, torch.Tensor], sample: torch.Tensor,
                 noise: torch.Tensor) -> None:
        self.nobs = {k: v.clone() for k, v in nobs.items()}
        self.sample, self.noise = sample.clone(), noise.clone()
        side = torch.cuda.Stream(device=sample.device)
        side.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(side):  # warm-up off the capture stream: autotuning, workspaces, caches
            for _ in range(2):
                run(self.nobs, self.sample, self.noise)
        torch.cuda.current_stream(sample.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = run(self.nobs, self.sample, self.noise)

    def __call__(self, nobs: Mapping[str, torch.Tensor], sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        for key, value in nobs.items():
            self.nobs[key].copy_(value)
        self.sample.copy_(sample)
        self.noise.copy_(noise)
        self.graph.replay()
        return self.out.clone()


class FastSampler:
    """``predict_action`` for inference: coefficient loop, optional bf16 weights, optional CUDA graphs.

    ``weights``: ``"fp32"`` uses the policy's own modules (so later weight updates are seen) and
    ``"bf16"`` a bf16 copy of the encoder and U-Net taken now (build a new sampler after loading other
    weights). ``cuda_graph``: capture the encoder and the whole loop per batch size on CUDA (``None``:
    on CUDA only); where capturing the encoder fails, only the loop is captured and the encoder runs
    eagerly (``graph_scope`` says which). The policy must be in eval mode (the crop is random in training).
    """

    def __init__(self, policy: nn.Module, weights: str = "bf16", cuda_graph: bool | None = None) -> None:
        if weights not in FAST_WEIGHTS:
            raise ValueError(f"weights must be one of {tuple(FAST_WEIGHTS)}, got {weights!r}")
        self.policy = policy
        self.dtype = FAST_WEIGHTS[weights]
        self.weights = weights
        device = policy.device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the policy on a CUDA device; it is on {device}")
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        if self.dtype == policy.dtype:
            self.encoder, self.model = policy.obs_encoder, policy.model
        else:
            self.encoder = copy.deepcopy(policy.obs_encoder).to(self.dtype).eval()
            self.model = copy.deepcopy(policy.model).to(self.dtype).eval()
        scheduler = policy.inference_scheduler
        self.steps = sampler_steps(copy.deepcopy(scheduler), policy.num_inference_steps)
        self.prediction_type = scheduler.config.prediction_type
        self.clip_range = float(scheduler.config.clip_sample_range) if scheduler.config.clip_sample else None
        self._timesteps = [torch.tensor(s.timestep, device=device, dtype=torch.long) for s in self.steps]
        self._graphs: dict[int, _Graph] = {}
        self._encoder_graphed: dict[int, bool] = {}

    @property
    def graph_scope(self) -> dict[int, str]:
        """Per captured batch size: ``"encoder+sampler"`` or ``"sampler"`` (the encoder ran eagerly)."""
        return {b: "encoder+sampler" if full else "sampler" for b, full in self._encoder_graphed.items()}

    def _encode(self, nobs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.policy.encode_obs({k: v.to(self.dtype) for k, v in nobs.items()}, encoder=self.encoder)

    def _loop(self, cond: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        def denoise(x: torch.Tensor, index: int) -> torch.Tensor:
            return self.model(x.to(self.dtype), self._timesteps[index], global_cond=cond)

        return run_sampler(denoise, sample, self.steps, noise, self.prediction_type, self.clip_range)

    def _full(self, nobs: Mapping[str, torch.Tensor], sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._loop(self._encode(nobs), sample, noise)

    def _graphed(self, nobs: dict[str, torch.Tensor], sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        if batch not in self._graphs:
            try:
                self._graphs[batch] = _Graph(self._full, nobs, sample, noise)
                self._encoder_graphed[batch] = True
            except Exception as exc:  # noqa: BLE001 - an encoder op that cannot be captured: keep it eager
                warnings.warn(f"FastSampler: the observation encoder could not be captured in a CUDA graph "
                              f"({type(exc).__name__}: {exc}); capturing only the sampling loop", RuntimeWarning,
                              stacklevel=3)
                torch.cuda.synchronize(sample.device)
                cond = self._encode(nobs)
                self._graphs[batch] = _Graph(lambda c, s, n: self._loop(c["cond"], s, n), {"cond": cond}, sample, noise)
                self._encoder_graphed[batch] = False
        if self._encoder_graphed[batch]:
            return self._graphs[batch](nobs, sample, noise)
        return self._graphs[batch]({"cond": self._encode(nobs)}, sample, noise)

    @torch.no_grad()
    def __call__(self, obs: Mapping[str, Any], generator: torch.Generator | int | None = None) -> dict[str, torch.Tensor]:
        """Same inputs and outputs as ``DiffusionUnetPolicy.predict_action``."""
        policy = self.policy
        if policy.training:
            raise RuntimeError("FastSampler needs the policy in eval mode (policy.eval()): the crop is random in training")
        device = policy.device
        nobs, generator = policy.normalized_obs(obs, generator)
        nobs = {k: v.float() for k, v in nobs.items()}
        batch = next(iter(nobs.values())).shape[0]
        shape = (batch, policy.horizon, policy.action_dim)
        draw_device = generator.device if generator is not None else device
        # the draw order of diffusers' loop: the initial sample, then one per step that adds noise
        sample = torch.randn(shape, generator=generator, device=draw_device).to(device)
        noise = torch.stack([torch.randn(shape, generator=generator, device=draw_device)
                             for _ in range(noise_draws(self.steps))] or [torch.zeros(shape)]).to(device)
        if self.cuda_graph:
            naction = self._graphed(nobs, sample, noise)
        else:
            naction = self._full(nobs, sample, noise)
        return policy.actions_from(naction.float())
