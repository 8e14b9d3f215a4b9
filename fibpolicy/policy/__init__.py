"""Diffusion policy: 1-D conditional U-Net, multi-camera observation encoder, normaliser, diffusers schedulers, loading."""

from .crossway import CrosswayDecoder, CrosswayDiffusionUnetPolicy
from .diffusion import DEFAULT_NOISE_SCHEDULER, INFERENCE_SCHEDULERS, DiffusionUnetPolicy
from .fast_inference import FAST_WEIGHTS, FastSampler
from .loading import load_policy
from .normalizer import NORMALIZER_MODES, LinearNormalizer, SingleFieldNormalizer
from .obs_encoder import DEFAULT_IMAGE_ENCODER, MultiImageObsEncoder, crop_images
from .unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, Conv1dBlock, SinusoidalPosEmb

__all__ = [
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "CrosswayDecoder",
    "CrosswayDiffusionUnetPolicy",
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_NOISE_SCHEDULER",
    "DiffusionUnetPolicy",
    "FAST_WEIGHTS",
    "FastSampler",
    "INFERENCE_SCHEDULERS",
    "LinearNormalizer",
    "MultiImageObsEncoder",
    "NORMALIZER_MODES",
    "SingleFieldNormalizer",
    "SinusoidalPosEmb",
    "crop_images",
    "load_policy",
]
