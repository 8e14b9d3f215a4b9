"""Image and video encoders built around Fibottention ViTs (timm-registered) and their dense twins."""

from .features import ViTFeatureEncoder, create_vit_encoder
from .resnet import ResNet18GNEncoder, create_resnet18_gn_encoder
from .video_vit import (
    DividedSpaceTimeBlock,
    VideoVisionTransformer,
    load_image_weights,
    video_variant,
    video_vision_transformer,
)
from .vit import ATTENTION_KINDS, VIT_SIZES, count_parameters, fibottentionize, vision_transformer

__all__ = [
    "ATTENTION_KINDS",
    "DividedSpaceTimeBlock",
    "VIT_SIZES",
    "VideoVisionTransformer",
    "ViTFeatureEncoder",
    "count_parameters",
    "create_vit_encoder",
    "fibottentionize",
    "load_image_weights",
    "video_variant",
    "video_vision_transformer",
    "vision_transformer",
]
