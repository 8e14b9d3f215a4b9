"""H.264 mp4 files through PyAV (rollout videos, generated video datasets), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import av
import numpy as np

from ..atomic import atomic_path


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Encode uint8 (H, W, 3) RGB frames to ``path`` (H.264, yuv420p); returns the path."""
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    first = np.asarray(frames[0])
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames must be uint8 (H, W, 3) RGB, got {first.dtype} {first.shape}")
    path = Path(path)
    # yuv420p needs even sizes: pad by repeating the last row / column.
    h, w = first.shape[:2]
    ph, pw = h + h % 2, w + w % 2
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        for frame in frames:
            frame = np.asarray(frame)
            if frame.shape != first.shape:
                raise ValueError(f"frame of shape {frame.shape} after frames of shape {first.shape}")
            if (ph, pw) != (h, w):
                frame = np.pad(frame, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode an mp4 to a uint8 (T, H, W, 3) array (used by tests and notebooks)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
