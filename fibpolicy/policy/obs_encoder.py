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
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from ..encoders.features import create_feature_encoder
from ..shape_meta import ShapeMeta

__all__ = ["DEFAULT_IMAGE_ENCODER", "MultiImageObsEncoder", "crop_images"]

# The Fibottention robot experiments: ViT-B, patch 8, mean of the patch tokens.
DEFAULT_IMAGE_ENCODER = partial(create_feature_encoder, "vit_fib_base_patch16_224", patch_size=8, pool="mean")
ImageEncoderFactory = Callable[..., nn.Module]

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

    ``image_encoder``: a factory called per camera as ``factory(img_size=(h, w), in_chans=c)`` (an encoder
    config is such a partial of ``create_feature_encoder``), a timm model name, or an ``nn.Module``
    (deep-copied per camera unless shared); default: Fibottention ViT-B/8. ``crop_shape``: int, (h, w), a
    dict by camera key, or None for no crop; the task sets it from its image size. ``random_crop=False``
    uses the centre crop in training too. ``share_encoder=True`` uses one encoder for all cameras.
    """

    def __init__(
        self,
        shape_meta: Mapping[str, Any] | ShapeMeta,
        image_encoder: str | nn.Module | ImageEncoderFactory | None = None,
        crop_shape: int | Sequence[int] | Mapping[str, Any] | None = None,
        random_crop: bool = True,
        share_encoder: bool = False,
    ) -> None:
        super().__init__()
        meta = ShapeMeta(shape_meta)
        self.rgb_shapes = {k: meta.obs[k].shape for k in meta.rgb_keys}
        self.low_dim_shapes = {k: meta.obs[k].shape for k in meta.low_dim_keys}
        self.rgb_keys = list(self.rgb_shapes)
        self.low_dim_keys = list(self.low_dim_shapes)
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

        if image_encoder is None:
            image_encoder = DEFAULT_IMAGE_ENCODER
        elif isinstance(image_encoder, str):
            image_encoder = partial(create_feature_encoder, image_encoder)

        def make(key: str, first: nn.Module | None) -> nn.Module:
            if isinstance(image_encoder, nn.Module):
                return image_encoder if first is None else copy.deepcopy(image_encoder)
            if callable(image_encoder):
                crop = self.crop_shapes[key]
                return image_encoder(img_size=crop if crop[0] != crop[1] else crop[0], in_chans=self.rgb_shapes[key][0])
            raise TypeError(f"image_encoder must be a factory, a timm model name or an nn.Module, got {type(image_encoder).__name__}")

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
