"""Observation encoder: any number of cameras plus low-dim keys -> one feature vector per observation step.

Input: a dict of (N, ...) tensors, N = batch x obs steps, **already normalised** (images in [-1, 1] as the
reference normaliser maps them, low-dim keys min-max normalised). Each camera image is cropped to
``crop_shape`` (a random crop per image in training mode, the centre crop in eval mode), encoded by its own
image encoder (or one shared encoder), and the features are concatenated: cameras first, then low-dim keys
(flattened), each group in ``shape_meta`` order. ``output_dim`` is the width of that vector.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from ..encoders.features import create_vit_encoder
from ..encoders.resnet import create_resnet18_gn_encoder

__all__ = ["IMAGE_ENCODERS", "MultiImageObsEncoder", "build_image_encoder", "crop_images", "parse_shape_meta"]

IMAGE_ENCODERS = ("vit_fib", "vit_dense", "resnet18_gn")
OBS_TYPES = ("rgb", "low_dim")


def parse_shape_meta(shape_meta: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]], tuple[int, ...]]:
    """(rgb keys -> (C, H, W), low-dim keys -> shape, action shape) from a plain shape_meta dict."""
    if "obs" not in shape_meta or "action" not in shape_meta:
        raise ValueError(f"shape_meta needs 'obs' and 'action' entries, got keys {sorted(shape_meta)}")
    rgb, low_dim = {}, {}
    for key, meta in shape_meta["obs"].items():
        shape = tuple(int(s) for s in meta["shape"])
        kind = meta.get("type", "low_dim")
        if kind == "rgb":
            if len(shape) != 3:
                raise ValueError(f"shape_meta obs {key!r}: rgb shape must be [C, H, W], got {list(shape)}")
            rgb[key] = shape
        elif kind == "low_dim":
            low_dim[key] = shape
        else:
            raise ValueError(f"shape_meta obs {key!r}: type must be one of {OBS_TYPES}, got {kind!r}")
    action = tuple(int(s) for s in shape_meta["action"]["shape"])
    if len(action) != 1:
        raise ValueError(f"shape_meta action shape must be [action_dim], got {list(action)}")
    return rgb, low_dim, action


def build_image_encoder(name: str, image_shape: Sequence[int], **kwargs: Any) -> nn.Module:
    """A named image encoder for (C, H, W) inputs: ``vit_fib`` (default ViT-B/8), ``vit_dense``, ``resnet18_gn``.

    ``kwargs`` go to ``create_vit_encoder`` (e.g. ``model_name``, ``patch_size``, ``depth``, Fibottention options)
    or to ``create_resnet18_gn_encoder``.
    """
    channels, height, width = (int(s) for s in image_shape)
    if name in ("vit_fib", "vit_dense"):
        options = dict(kwargs)
        if name == "vit_dense":
            options["attention"] = "dense"
        options.setdefault("img_size", height if height == width else (height, width))
        return create_vit_encoder(in_chans=channels, **options)
    if name == "resnet18_gn":
        return create_resnet18_gn_encoder(in_chans=channels, **kwargs)
    raise ValueError(f"image encoder must be one of {IMAGE_ENCODERS}, an nn.Module or a factory, got {name!r}")


def crop_images(images: torch.Tensor, crop: tuple[int, int], random: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Crop (N, C, H, W) images to ``crop``: an independent random offset per image, or the centre crop."""
    n, _, height, width = images.shape
    ch, cw = crop
    if (ch, cw) == (height, width):
        return images
    if ch > height or cw > width:
        raise ValueError(f"crop {crop} is larger than the images {(height, width)}")
    if not random:
        top, left = (height - ch) // 2, (width - cw) // 2
        return images[:, :, top : top + ch, left : left + cw]
    device = images.device
    top = torch.randint(0, height - ch + 1, (n,), generator=generator, device=generator.device if generator else "cpu").to(device)
    left = torch.randint(0, width - cw + 1, (n,), generator=generator, device=generator.device if generator else "cpu").to(device)
    rows = (top[:, None] + torch.arange(ch, device=device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(cw, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return images[batch, chans, rows, cols]


def _feature_dim(encoder: nn.Module, shape: tuple[int, int, int]) -> int:
    dim = getattr(encoder, "output_dim", None)
    if dim is not None:
        return int(dim)
    with torch.no_grad():  # infer it once from a dummy image
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else "cpu"
        was_training = encoder.training
        out = encoder.eval()(torch.zeros(1, *shape, device=device))
        encoder.train(was_training)
    return int(out.reshape(1, -1).shape[1])


class MultiImageObsEncoder(nn.Module):
    """Cameras + low-dim keys -> (N, output_dim).

    ``image_encoder``: a name from ``IMAGE_ENCODERS`` (built per camera with ``image_encoder_kwargs``),
    an ``nn.Module`` (deep-copied per camera unless shared), or a zero-argument factory (called per camera).
    ``crop_shape``: int, (h, w), a dict by camera key, or None for no crop. ``random_crop=False`` uses the
    centre crop in training too. ``share_encoder=True`` uses one encoder for all cameras.
    """

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        image_encoder: str | nn.Module | Callable[[], nn.Module] = "vit_fib",
        image_encoder_kwargs: Mapping[str, Any] | None = None,
        crop_shape: int | Sequence[int] | Mapping[str, Any] | None = 84,
        random_crop: bool = True,
        share_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.rgb_shapes, self.low_dim_shapes, _ = parse_shape_meta(shape_meta)
        self.rgb_keys = list(self.rgb_shapes)
        self.low_dim_keys = list(self.low_dim_shapes)
        if not self.rgb_keys and not self.low_dim_keys:
            raise ValueError("shape_meta['obs'] has no keys; the encoder needs at least one camera or low-dim key")
        self.random_crop = random_crop
        self.share_encoder = share_encoder
        self.crop_shapes: dict[str, tuple[int, int]] = {}
        for key, (_, height, width) in self.rgb_shapes.items():
            crop = crop_shape.get(key) if isinstance(crop_shape, Mapping) else crop_shape
            if crop is None:
                crop = (height, width)
            elif isinstance(crop, int):
                crop = (crop, crop)
            crop = (int(crop[0]), int(crop[1]))
            if crop[0] > height or crop[1] > width or min(crop) < 1:
                raise ValueError(f"crop_shape {crop} for camera {key!r} does not fit its images ({height}, {width})")
            self.crop_shapes[key] = crop

        kwargs = dict(image_encoder_kwargs or {})
        if kwargs and not isinstance(image_encoder, str):
            raise ValueError("image_encoder_kwargs only apply to a named image_encoder")

        def make(key: str, first: nn.Module | None) -> nn.Module:
            channels = self.rgb_shapes[key][0]
            shape = (channels, *self.crop_shapes[key])
            if isinstance(image_encoder, str):
                return build_image_encoder(image_encoder, shape, **kwargs)
            if isinstance(image_encoder, nn.Module):
                return image_encoder if first is None else copy.deepcopy(image_encoder)
            if callable(image_encoder):
                return image_encoder()
            raise TypeError(f"image_encoder must be a name, an nn.Module or a factory, got {type(image_encoder).__name__}")

        self.image_encoders = nn.ModuleDict()
        self._encoder_of: dict[str, str] = {}
        first: nn.Module | None = None
        for key in self.rgb_keys:
            if share_encoder and first is not None:
                self._encoder_of[key] = "shared"
                continue
            encoder = make(key, first)
            name = "shared" if share_encoder else key
            self.image_encoders[name] = encoder
            self._encoder_of[key] = name
            first = first or encoder

        self.feature_dims: dict[str, int] = {}
        for key in self.rgb_keys:
            channels = self.rgb_shapes[key][0]
            self.feature_dims[key] = _feature_dim(self.image_encoders[self._encoder_of[key]], (channels, *self.crop_shapes[key]))
        for key, shape in self.low_dim_shapes.items():
            self.feature_dims[key] = int(torch.Size(shape).numel())
        self.output_dim = sum(self.feature_dims.values())

    def encoder_for(self, key: str) -> nn.Module:
        """The image encoder used for camera ``key``."""
        return self.image_encoders[self._encoder_of[key]]

    def crop(self, key: str, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The crop the encoder sees for camera ``key`` (random in training mode if ``random_crop``)."""
        return crop_images(images, self.crop_shapes[key], random=self.training and self.random_crop, generator=generator)

    def forward(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Dict of normalised (N, ...) tensors -> (N, output_dim)."""
        missing = [k for k in (*self.rgb_keys, *self.low_dim_keys) if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; the encoder expects {self.rgb_keys + self.low_dim_keys}")
        features = []
        for key in self.rgb_keys:
            images = obs[key]
            if tuple(images.shape[1:]) != self.rgb_shapes[key]:
                raise ValueError(f"obs {key!r}: expected (N, {', '.join(map(str, self.rgb_shapes[key]))}), got {tuple(images.shape)}")
            encoder = self.encoder_for(key)
            features.append(encoder(self.crop(key, images, generator)).reshape(images.shape[0], -1))
        for key in self.low_dim_keys:
            x = obs[key]
            if tuple(x.shape[1:]) != self.low_dim_shapes[key]:
                raise ValueError(f"obs {key!r}: expected (N, {', '.join(map(str, self.low_dim_shapes[key]))}), got {tuple(x.shape)}")
            features.append(x.reshape(x.shape[0], -1))
        sizes = {f.shape[0] for f in features}
        if len(sizes) > 1:
            raise ValueError(f"observation keys have different batch sizes {sorted(sizes)}")
        return torch.cat(features, dim=-1)
