"""Where and at what precision fibpolicy computes: one default device and one ``precision`` rule."""

from __future__ import annotations

import warnings

import torch

__all__ = ["PRECISIONS", "default_device", "native_bf16", "use_bf16"]

PRECISIONS = ("auto", "bf16", "fp32")


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively (CPU: oneDNN's check for AVX-512 BF16 / AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a private op: absent from some builds
            return False
    return False


def use_bf16(precision: str, device: torch.device | str) -> bool:
    """Whether training and evaluation on ``device`` run under bf16 autocast.

    ``auto``: where the hardware computes bf16 natively (CUDA, CPUs with AVX-512 BF16 / AMX, where it
    roughly halves a ViT step); elsewhere emulated bf16 would be slower than fp32. ``bf16``: always (with a
    warning where it is emulated). ``fp32``: never.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not understood; expected one of {PRECISIONS}")
    if precision == "fp32":
        return False
    native = native_bf16(device)
    if precision == "bf16" and not native:
        warnings.warn(
            f"precision='bf16' on a {torch.device(device).type} device without native bf16: autocast is emulated "
            "and slower than fp32 (precision=auto picks fp32 here)", RuntimeWarning, stacklevel=2,
        )
        return True
    return native
