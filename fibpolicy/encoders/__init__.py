"""Image and video encoders built around Fibottention ViTs (timm-registered) and their dense twins, and FCViT."""

from .fcvit import FCViT, fcvit_b12, fcvit_b24, fcvit_b48, fcvit_tiny
from .features import ConvFeatureEncoder, ViTFeatureEncoder, create_feature_encoder, create_vit_encoder
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
    "ConvFeatureEncoder",
    "DividedSpaceTimeBlock",
    "FCViT",
    "VIT_SIZES",
    "VideoVisionTransformer",
    "ViTFeatureEncoder",
    "count_parameters",
    "fcvit_b12",
    "fcvit_b24",
    "fcvit_b48",
    "fcvit_tiny",
    "create_feature_encoder",
    "create_resnet18_gn_encoder",
    "ResNet18GNEncoder",
    "create_vit_encoder",
    "fibottentionize",
    "load_image_weights",
    "video_variant",
    "video_vision_transformer",
    "vision_transformer",
]
