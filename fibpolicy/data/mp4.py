"""H.264 mp4 files through PyAV (rollout videos, generated video datasets), written atomically."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from ..atomic import atomic_path


def import_av() -> ModuleType:
    """PyAV, imported when a video is first written or read."""
    # PyAV carries FFmpeg (~100 MB installed): runs that write no videos (the GPU suite's machine, where
    # every package travels as a wheel) work without it.
    try:
        import av
    except ImportError as err:
        raise ImportError("writing or reading mp4 videos needs PyAV: pip install av "
                          "(or turn rollout videos off: task.evaluator.n_train_videos=0 task.evaluator.n_test_videos=0)") from err
    return av


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Encode uint8 (H, W, 3) RGB frames to ``path`` (H.264, yuv420p); returns the path."""
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    first = np.asarray(frames[0])
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames must be uint8 (H, W, 3) RGB, got {first.dtype} {first.shape}")
    path = Path(path)
    # yuv420p needs even sizes: pad by repeating the last row / column.
    av = import_av()
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
    av = import_av()
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
