"""Image encoders built around Fibottention ViTs (timm-registered) and their dense twins."""

from .features import ViTFeatureEncoder, create_vit_encoder
from .resnet import ResNet18GNEncoder, create_resnet18_gn_encoder
from .vit import ATTENTION_KINDS, VIT_SIZES, count_parameters, fibottentionize, vision_transformer

__all__ = [
    "ATTENTION_KINDS",
    "VIT_SIZES",
    "ViTFeatureEncoder",
    "count_parameters",
    "create_vit_encoder",
    "fibottentionize",
    "vision_transformer",
]
