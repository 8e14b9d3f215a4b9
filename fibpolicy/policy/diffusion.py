"""Diffusion policy with a 1-D conditional U-Net denoiser and global observation conditioning.

One class serves image and low-dim tasks: the observation encoder concatenates camera features (if any) and
low-dim keys per step, and the ``n_obs_steps`` step vectors are flattened into the U-Net's global condition.

The policy owns its time window (``horizon``, ``n_obs_steps``, ``n_action_steps``): datasets take their
windows from it and rollouts go through its ``reset()`` / ``select_action(obs)`` queue, so no other part of
a task declares them. It also owns its normaliser, which travels in its ``state_dict``.

Formats (env units; the policy normalises and unnormalises with its ``normalizer``):
- training batch: ``{"obs": {key: (B, T, ...)}, "action": (B, horizon, action_dim)}`` with ``T >= n_obs_steps``
  (the first ``n_obs_steps`` are used); images float in [0, 1], (C, H, W).
- ``predict_action(obs)``: ``obs[key]`` is (B, n_obs_steps, ...) (uint8 images are divided by 255); returns
  ``{"action": (B, n_action_steps, action_dim), "action_pred": (B, horizon, action_dim)}`` where
  ``action = action_pred[:, n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]``.
- ``select_action(obs)``: ``obs[key]`` is one step, (B, ...); returns (B, action_dim), predicting a new chunk
  whenever the queue of the last one is empty (the first observation after ``reset()`` fills the history).

Call ``policy.eval()`` before inference: the image crop is random in training mode.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from ..shape_meta import ShapeMeta
from .fast_inference import FastSampler
from .normalizer import LinearNormalizer
from .obs_encoder import MultiImageObsEncoder
from .unet1d import ConditionalUnet1D

__all__ = ["DEFAULT_NOISE_SCHEDULER", "DiffusionUnetPolicy", "INFERENCE_SCHEDULERS"]

DEFAULT_NOISE_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=100,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="squaredcos_cap_v2",
    variance_type="fixed_small",
    clip_sample=True,
    prediction_type="epsilon",
)
INFERENCE_SCHEDULERS = ("ddpm", "ddim")


class DiffusionUnetPolicy(nn.Module):
    """Obs encoder + ``ConditionalUnet1D`` + DDPM training / DDPM-or-DDIM sampling + normaliser + action queue.

    ``obs_encoder``: an ``nn.Module`` with ``output_dim`` (a config builds a ``MultiImageObsEncoder``), or
    keyword arguments for ``MultiImageObsEncoder`` (``shape_meta`` is added), or None for its defaults
    (Fibottention ViT-B/8, no crop). ``noise_scheduler``: a ``DDPMScheduler`` or its keyword arguments
    (default: the reference settings). ``inference_scheduler`` / ``num_inference_steps`` select the
    sampler (default DDPM with all train steps).
    """

    def __init__(
        self,
        shape_meta: Mapping[str, Any] | ShapeMeta,
        obs_encoder: nn.Module | Mapping[str, Any] | None = None,
        noise_scheduler: DDPMScheduler | Mapping[str, Any] | None = None,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        num_inference_steps: int | None = None,
        inference_scheduler: str = "ddpm",
        diffusion_step_embed_dim: int = 128,
        down_dims: Sequence[int] = (512, 1024, 2048),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
        normalizer: LinearNormalizer | None = None,
    ) -> None:
        super().__init__()
        self.shape_meta = ShapeMeta(shape_meta)
        self.action_dim = self.shape_meta.action_dim
        if not 1 <= n_obs_steps <= horizon or n_action_steps < 1 or n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"need 1 <= n_obs_steps <= horizon and n_obs_steps - 1 + n_action_steps <= horizon; got "
                f"horizon={horizon}, n_obs_steps={n_obs_steps}, n_action_steps={n_action_steps}"
            )
        multiple = 2 ** (len(down_dims) - 1)
        if horizon % multiple:
            raise ValueError(f"horizon {horizon} must be divisible by {multiple} for {len(down_dims)} U-Net levels")
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)

        if obs_encoder is None or isinstance(obs_encoder, Mapping):
            self.obs_encoder = MultiImageObsEncoder(shape_meta=self.shape_meta, **dict(obs_encoder or {}))
        elif isinstance(obs_encoder, nn.Module):
            self.obs_encoder = obs_encoder
        else:
            raise TypeError(f"obs_encoder must be an nn.Module, a dict of keywords or None, got {type(obs_encoder).__name__}")
        if not hasattr(self.obs_encoder, "output_dim"):
            raise ValueError("obs_encoder must have an output_dim attribute (features per observation step)")
        self.obs_feature_dim = int(self.obs_encoder.output_dim)
        self.global_cond_dim = self.obs_feature_dim * self.n_obs_steps

        self.model = ConditionalUnet1D(
            input_dim=self.action_dim,
            global_cond_dim=self.global_cond_dim,
            diffusion_step_embed_dim=diffusion_step_embed_dim,
            down_dims=down_dims,
            kernel_size=kernel_size,
            n_groups=n_groups,
            cond_predict_scale=cond_predict_scale,
        )

        if isinstance(noise_scheduler, DDPMScheduler):
            self.noise_scheduler = noise_scheduler
        elif noise_scheduler is None or isinstance(noise_scheduler, Mapping):
            self.noise_scheduler = DDPMScheduler(**{**DEFAULT_NOISE_SCHEDULER, **dict(noise_scheduler or {})})
        else:
            raise TypeError(f"noise_scheduler must be a DDPMScheduler, a dict or None, got {type(noise_scheduler).__name__}")
        self.set_inference(inference_scheduler, num_inference_steps)

        self._fast: FastSampler | None = None
        self.normalizer = LinearNormalizer()
        if normalizer is not None:
            self.set_normalizer(normalizer)
        self.reset()

    # ------------------------------------------------------------------ setup
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        """Copy a fitted normaliser into the policy (its keys must cover the obs keys and ``action``)."""
        needed = [*self.shape_meta.obs, "action"]
        missing = [k for k in needed if k not in normalizer]
        if missing:
            raise KeyError(f"normalizer lacks keys {missing}; it has {normalizer.keys()}, the policy needs {needed}")
        self.normalizer.load_state_dict(copy.deepcopy(normalizer.state_dict()))
        self.normalizer.to(self.device)

    def set_inference(self, scheduler: str = "ddpm", num_inference_steps: int | None = None) -> None:
        """Sampler used by ``predict_action``: ``"ddpm"`` or ``"ddim"``, with ``num_inference_steps`` (default: all)."""
        if scheduler not in INFERENCE_SCHEDULERS:
            raise ValueError(f"inference scheduler must be one of {INFERENCE_SCHEDULERS}, got {scheduler!r}")
        train_steps = int(self.noise_scheduler.config.num_train_timesteps)
        steps = train_steps if num_inference_steps is None else int(num_inference_steps)
        if not 1 <= steps <= train_steps:
            raise ValueError(f"num_inference_steps must be in [1, {train_steps}], got {steps}")
        cfg = self.noise_scheduler.config
        if scheduler == "ddpm":
            self.inference_scheduler = DDPMScheduler.from_config(cfg)
        else:
            self.inference_scheduler = DDIMScheduler(
                num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                beta_schedule=cfg.beta_schedule, trained_betas=cfg.trained_betas, clip_sample=cfg.clip_sample,
                clip_sample_range=cfg.clip_sample_range, set_alpha_to_one=True, steps_offset=0,
                prediction_type=cfg.prediction_type,
            )
        self.inference_scheduler_name = scheduler
        self.num_inference_steps = steps
        fast = getattr(self, "_fast", None)
        if fast is not None:  # its coefficient table belongs to the sampler it was built for
            self._fast = FastSampler(self, weights=fast.weights, cuda_graph=fast.cuda_graph)

    # ------------------------------------------------------------------ shared pieces
    def _require_normalizer(self) -> None:
        if len(self.normalizer) == 0:
            raise RuntimeError("the policy has no fitted normalizer; call set_normalizer(dataset.get_normalizer()) first")

    def _check_obs(self, obs: Mapping[str, torch.Tensor], min_steps: int, exact: bool) -> None:
        for key, meta in self.shape_meta.obs.items():
            if key not in obs:
                raise KeyError(f"observation is missing key {key!r}; expected keys {list(self.shape_meta.obs)}")
            x = obs[key]
            shape = meta.shape
            steps_ok = x.dim() >= 2 and (x.shape[1] == min_steps if exact else x.shape[1] >= min_steps)
            if not steps_ok or tuple(x.shape[2:]) != shape:
                want = f"{min_steps}" if exact else f">={min_steps}"
                raise ValueError(f"obs {key!r}: expected (B, {want}, {', '.join(map(str, shape))}), got {tuple(x.shape)}")

    def encode_obs(self, nobs: Mapping[str, torch.Tensor], encoder: nn.Module | None = None) -> torch.Tensor:
        """Normalised (B, T>=To, ...) obs -> (B, To * obs_feature_dim) global condition (step-major), through
        ``encoder`` (default: the policy's; the fast sampler passes its bf16 copy)."""
        batch = next(iter(nobs.values())).shape[0]
        flat = {k: v[:, : self.n_obs_steps].reshape(-1, *v.shape[2:]) for k, v in nobs.items() if k in self.shape_meta.obs}
        features = (encoder or self.obs_encoder)(flat)
        return features.reshape(batch, -1)

    def _prepare_obs(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = self.device
        missing = [k for k in self.shape_meta.obs if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; expected keys {list(self.shape_meta.obs)}")
        out = {}
        for key, meta in self.shape_meta.obs.items():
            x = torch.as_tensor(obs[key], device=device)
            if meta.type == "rgb" and x.dtype == torch.uint8:
                x = x.to(torch.float32) / 255.0
            out[key] = x
        return out

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Denoising loss: MSE between the U-Net output and the scheduler's target (epsilon by default)."""
        return self.diffusion_loss(batch)

    def diffusion_loss(
        self, batch: Mapping[str, Any], return_bottleneck: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The denoising loss; with ``return_bottleneck`` also the normalised obs and the U-Net bottleneck
        (what a training-only auxiliary head such as Crossway's decoder reads)."""
        self._require_normalizer()
        obs = self._prepare_obs(batch["obs"])
        self._check_obs(obs, self.n_obs_steps, exact=False)
        action = torch.as_tensor(batch["action"], device=self.device)
        if action.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(f"batch 'action': expected (B, {self.horizon}, {self.action_dim}), got {tuple(action.shape)}")
        nobs = self.normalizer.normalize(obs)
        trajectory = self.normalizer["action"].normalize(action)
        global_cond = self.encode_obs(nobs)

        noise = torch.randn(trajectory.shape, device=trajectory.device, dtype=trajectory.dtype)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (trajectory.shape[0],), device=trajectory.device
        ).long()
        noisy = self.noise_scheduler.add_noise(trajectory, noise, timesteps)
        pred, bottleneck = self.model(noisy, timesteps, global_cond=global_cond, return_bottleneck=True)

        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "sample":
            target = trajectory
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(trajectory, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        loss = F.mse_loss(pred.float(), target.float())
        return (loss, nobs, bottleneck) if return_bottleneck else loss

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def conditional_sample(
        self, global_cond: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Run the inference scheduler from Gaussian noise; returns normalised (B, horizon, action_dim)."""
        scheduler = self.inference_scheduler
        # noise is drawn on the generator's device (a CPU generator also works for a CUDA policy), in float32
        trajectory = torch.randn(
            (global_cond.shape[0], self.horizon, self.action_dim), generator=generator,
            device=generator.device if generator is not None else global_cond.device, dtype=torch.float32,
        ).to(global_cond.device)
        scheduler.set_timesteps(self.num_inference_steps, device=global_cond.device)
        for t in scheduler.timesteps:
            model_output = self.model(trajectory, t, global_cond=global_cond)
            trajectory = scheduler.step(model_output, t, trajectory, generator=generator).prev_sample
        return trajectory

    @torch.no_grad()
    def predict_action(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | int | None = None
    ) -> dict[str, torch.Tensor]:
        """Observations (B, n_obs_steps, ...) in env units -> actions in env units (see the module docstring).

        ``generator`` (a ``torch.Generator`` on the policy's device, or an int seed) makes sampling deterministic.
        After ``enable_fast_inference()`` it runs the fast sampler (in eval mode), which draws the same noise.
        """
        if self._fast is not None and not self.training:
            return self._fast(obs, generator=generator)
        nobs, generator = self.normalized_obs(obs, generator)
        naction = self.conditional_sample(self.encode_obs(nobs), generator=generator)
        return self.actions_from(naction)

    def normalized_obs(
        self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | int | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Generator | None]:
        """``predict_action``'s inputs -> (checked, normalised obs on the policy's device, generator)."""
        self._require_normalizer()
        if isinstance(generator, int):
            generator = torch.Generator(device=self.device).manual_seed(generator)
        prepared = self._prepare_obs(obs)
        self._check_obs(prepared, self.n_obs_steps, exact=True)
        return self.normalizer.normalize(prepared), generator

    def actions_from(self, naction: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised (B, horizon, action_dim) samples -> ``predict_action``'s output in env units."""
        action_pred = self.normalizer["action"].unnormalize(naction)
        start = self.n_obs_steps - 1
        return {"action": action_pred[:, start : start + self.n_action_steps], "action_pred": action_pred}

    def enable_fast_inference(self, weights: str = "bf16", cuda_graph: bool | None = None) -> FastSampler:
        """Route eval-mode ``predict_action`` (and so ``select_action``) through a ``FastSampler``: the
        schedule as fixed coefficients, ``weights`` ``"bf16"`` (a copy taken now) or ``"fp32"``, and on
        CUDA one captured graph per batch size. Call it after moving the policy to its device, and again
        after loading other weights; ``set_inference`` rebuilds it for the new sampler."""
        self._fast = FastSampler(self, weights=weights, cuda_graph=cuda_graph)
        return self._fast

    def disable_fast_inference(self) -> None:
        """Back to diffusers' scheduler loop with the policy's own weights."""
        self._fast = None

    def __deepcopy__(self, memo: dict) -> DiffusionUnetPolicy:
        # an EMA or checkpoint copy never carries the fast sampler (its graphs and weight copies)
        fast, self._fast = self._fast, None
        try:
            clone = self.__class__.__new__(self.__class__)
            memo[id(self)] = clone
            clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        finally:
            self._fast = fast
        return clone

    # ------------------------------------------------------------------ acting in an environment
    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at the start of every episode)."""
        self._obs_history: deque[dict[str, torch.Tensor]] = deque(maxlen=self.n_obs_steps)
        self._action_queue: deque[torch.Tensor] = deque()

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any], generator: torch.Generator | int | None = None) -> torch.Tensor:
        """One observation step (B, ...) per key in env units -> the next action (B, action_dim).

        The last ``n_obs_steps`` observations are kept (the first one after ``reset()`` repeated); when the
        queue is empty, a chunk is predicted from them and its ``n_action_steps`` actions are queued.
        """
        step = {k: torch.as_tensor(obs[k]) for k in self.shape_meta.obs if k in obs}
        if not self._obs_history:
            self._obs_history.extend([step] * self.n_obs_steps)
        else:
            self._obs_history.append(step)
        if not self._action_queue:
            stacked = {k: torch.stack([h[k] for h in self._obs_history], dim=1) for k in step}
            chunk = self.predict_action(stacked, generator=generator)["action"]
            self._action_queue.extend(chunk.unbind(dim=1))
        return self._action_queue.popleft()

