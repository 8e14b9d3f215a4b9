"""Video data: moving shapes (procedural and as mp4 files), the list reader, clip sampling, corrupt videos."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fibpolicy.data import (
    MovingShapesDataset,
    VideoClipTransform,
    VideoDecodeError,
    VideoListDataset,
    decode_frames,
    probe_video,
    read_video_list,
    write_moving_shapes,
)
from fibpolicy.data.video_datasets import clip_indices, clip_starts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """Eight 12-frame moving-shapes mp4 files and their `path label` list."""
    out = tmp_path_factory.mktemp("videos")
    write_moving_shapes(out, 8, split="train", num_frames=12, image_size=32, seed=3)
    return out


def _shift(a, b, reach=4):
    """The (dx, dy) torus shift that best maps frame a's shape onto frame b's."""
    # The shape is much brighter than the background (colour >= 0.55, background <= 0.35).
    ma, mb = (f.astype(float).mean(-1) > 0.45 * 255 for f in (a, b))
    shifts = [(dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)]
    return max(shifts, key=lambda d: (np.roll(ma, d[::-1], axis=(0, 1)) & mb).sum())


def test_moving_shapes_motion_is_the_label():
    data = MovingShapesDataset(16, num_frames=6, image_size=48, speeds=(1.0, 3.0), noise=0.0, seed=1)
    assert data.classes[:2] == ["right@1px", "right@3px"] and len(data.classes) == 8
    assert np.bincount(data.targets).tolist() == [2] * 8
    for index in range(16):
        frames = data.video(index)
        assert frames.shape == (6, 48, 48, 3) and frames.dtype == np.uint8
        velocity = np.round(data.velocity(data.targets[index]), 6)
        for t in range(5):
            assert _shift(frames[t], frames[t + 1]) == tuple(velocity), (index, t, velocity)
    assert np.array_equal(data.video(3), MovingShapesDataset(16, num_frames=6, image_size=48, speeds=(1.0, 3.0), noise=0.0, seed=1).video(3))
    test = MovingShapesDataset(16, split="test", num_frames=6, image_size=48, speeds=(1.0, 3.0), noise=0.0, seed=1)
    assert not np.array_equal(data.video(3), test.video(3))


def test_cached_videos_are_the_rendered_ones():
    kwargs = dict(num_frames=4, video_frames=6, image_size=16, seed=2)
    cached, rendered = MovingShapesDataset(10, cache=True, **kwargs), MovingShapesDataset(10, **kwargs)
    for index in range(10):
        assert np.array_equal(cached.video(index), rendered.video(index))
        torch.manual_seed(index)  # the same random clip start from both
        a = cached[index]
        torch.manual_seed(index)
        b = rendered[index]
        assert torch.equal(a["video"], b["video"]) and a["label"] == b["label"]
    with pytest.raises(IndexError):
        cached.video(10)


def test_single_frames_do_not_tell_the_class():
    # Start positions are uniform on the torus and appearance is independent of the label, so the mean
    # first frame of every class is the same up to sampling noise.
    data = MovingShapesDataset(400, num_frames=2, image_size=16, noise=0.0, seed=0)
    firsts = np.stack([data.video(i)[0].astype(float).mean() for i in range(400)])
    class_means = [firsts[data.targets == c].mean() for c in range(8)]
    assert np.ptp(class_means) < 4 * firsts.std() / np.sqrt(50)


def test_clip_transform_shapes_and_determinism():
    frames = np.random.default_rng(0).integers(0, 256, (4, 36, 48, 3), dtype=np.uint8)
    test = VideoClipTransform(False, 32)
    out = test(frames)
    assert out.shape == (3, 4, 32, 32) and torch.equal(out, test(frames))
    train = VideoClipTransform(True, 32, jitter_scale=(32, 40), hflip=0.5)
    g = torch.Generator().manual_seed(0)
    a = train(frames, generator=g)
    assert a.shape == (3, 4, 32, 32)
    assert torch.equal(a, train(frames, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="jitter_scale"):
        VideoClipTransform(True, 32, jitter_scale=(16, 40))


def test_clip_sampling():
    assert clip_indices(5, 4, 3, 12) == [5, 8, 11, 11]
    assert clip_starts(20, 10, 1) == [5]
    assert clip_starts(20, 10, 3) == [0, 5, 10]
    assert clip_starts(4, 10, 2) == [0, 0]


def test_video_list_formats_and_errors(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\na/x.mp4 3\n\nb/y.mp4,1\n/abs/z.mp4\t0\n")
    assert read_video_list(lst) == [(tmp_path / "a/x.mp4", 3), (tmp_path / "b/y.mp4", 1), (Path("/abs/z.mp4"), 0)]
    assert read_video_list(lst, root="/data")[0][0].as_posix() == "/data/a/x.mp4"
    lst.write_text("a.mp4 3\nb.mp4 cat\n")
    with pytest.raises(ValueError, match=r"list.txt:2: label must be an integer"):
        read_video_list(lst)
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        read_video_list(tmp_path / "nothing.txt")


def test_written_mp4s_read_back_through_the_list_loader(video_dir):
    lines = (video_dir / "train.txt").read_text().split("\n")
    assert lines[0] == "train/000000.mp4 0" and len([line for line in lines if line]) == 8
    source = MovingShapesDataset(8, num_frames=12, image_size=32, seed=3)
    decoded = decode_frames(video_dir / "train" / "000003.mp4", list(range(12)))
    # H.264 at 32 px is lossy; the frames must still be close to what was rendered.
    assert decoded.shape == (12, 32, 32, 3)
    assert np.abs(decoded.astype(float) - source.video(3).astype(float)).mean() < 12

    test = VideoListDataset(video_dir / "train.txt", num_frames=4, sampling_rate=3, train=False,
                            num_clips=2, transform=VideoClipTransform(False, 32), classes_file=video_dir / "classes.txt")
    assert test.classes == source.classes and test.targets.tolist() == source.targets.tolist()
    item = test[3]
    assert item["video"].shape == (2, 3, 4, 32, 32) and item["label"] == int(source.targets[3])
    train = VideoListDataset(video_dir / "train.txt", num_frames=4, sampling_rate=2, train=True,
                             transform=VideoClipTransform(True, 32, jitter_scale=(32, 36)), classes_file=video_dir / "classes.txt")
    assert train[5]["video"].shape == (3, 4, 32, 32)
    raw = VideoListDataset(video_dir / "train.txt", num_frames=12, sampling_rate=1, train=False, num_classes=8)
    assert np.array_equal(raw[3]["video"].numpy(), decoded)


def test_corrupt_and_missing_videos_are_reported_and_skipped(tmp_path, video_dir):
    shutil.copy(video_dir / "train" / "000001.mp4", tmp_path / "good.mp4")
    shutil.copy(video_dir / "train" / "000002.mp4", tmp_path / "later_broken.mp4")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    good = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (tmp_path / "list.txt").write_text("garbage.mp4 0\ngood.mp4 1\nmissing.mp4 2\ntruncated.mp4 3\nlater_broken.mp4 4\n")

    with pytest.warns(UserWarning) as caught:
        data = VideoListDataset(tmp_path / "list.txt", num_frames=4, sampling_rate=1, train=False, num_classes=5)
    skipped = sorted(p.split("/")[-1] for p, _ in data.skipped)
    assert skipped == ["garbage.mp4", "missing.mp4", "truncated.mp4"]
    messages = " ".join(str(w.message) for w in caught)
    assert "garbage.mp4" in messages and "missing.mp4" in messages and "skipped 3 of 5" in messages
    assert len(data) == 2 and data.targets.tolist() == [1, 4]

    # A file that breaks after the list was checked: reported, counted, and the next video is used.
    (tmp_path / "later_broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="later_broken.mp4"):
        item = data[1]
    assert data.decode_failures == 1 and item["label"] == 1
    with pytest.raises(VideoDecodeError, match="consecutive"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (tmp_path / "good.mp4").write_bytes(b"\x00" * 100)
            data[0]
    (tmp_path / "only.txt").write_text("garbage.mp4 0\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of its 1 videos"):
        VideoListDataset(tmp_path / "only.txt", num_frames=4)


def test_containers_without_a_frame_count(tmp_path):
    import av

    path = tmp_path / "clip.mkv"  # matroska headers carry no frame count
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(15):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 15 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe_video(path) == 15
    grey = decode_frames(path, [0, 7, 14, 40]).mean(axis=(1, 2, 3))
    assert np.allclose(grey, [0, 105, 210, 210], atol=3)  # past the end: the last frame
