"""Diffusion policy: 1-D conditional U-Net, multi-camera observation encoder, diffusers schedulers, loading."""

from ..data.normalizer import LinearNormalizer
from .loading import load_policy
from .diffusion import DEFAULT_NOISE_SCHEDULER, INFERENCE_SCHEDULERS, DiffusionUnetImagePolicy, DiffusionUnetPolicy
from .obs_encoder import IMAGE_ENCODERS, MultiImageObsEncoder, build_image_encoder, crop_images, parse_shape_meta
from .unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, Conv1dBlock, SinusoidalPosEmb

__all__ = [
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "DEFAULT_NOISE_SCHEDULER",
    "DiffusionUnetImagePolicy",
    "DiffusionUnetPolicy",
    "IMAGE_ENCODERS",
    "INFERENCE_SCHEDULERS",
    "LinearNormalizer",
    "MultiImageObsEncoder",
    "SinusoidalPosEmb",
    "build_image_encoder",
    "load_policy",
    "crop_images",
    "parse_shape_meta",
]
