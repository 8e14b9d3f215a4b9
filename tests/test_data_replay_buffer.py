"""Zarr replay buffer: public format-2 layout, directory and zip, lazy and in memory, validation errors, writer."""

import pickle
import zipfile
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from fibpolicy.data import ArraySpec, ReplayBuffer, ReplayBufferError, ReplayBufferWriter, write_replay_buffer

EPISODE_ENDS = np.array([4, 9, 15], dtype=np.int64)


def make_data(n=15, image=8, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 256, size=(n, image, image, 3), dtype=np.uint8),
        "state": rng.normal(size=(n, 5)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, size=(n, 9, 2)).astype(np.float32),
        "n_contacts": rng.integers(0, 3, size=(n, 1)).astype(np.float32),
    }


def write_raw(path, data, episode_ends, *, zip_prefix=None):
    """A format-2 store written directly with zarr, the way the public dataset is laid out.

    write_empty_chunks: the public stores were written by zarr 2, which stores every chunk.
    """
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    group = root.create_group("data")
    for key, value in data.items():
        image = value.ndim == 4
        group.create_array(
            key, data=value, chunks=(1, *value.shape[1:]) if image else value.shape,
            compressor=numcodecs.Blosc(cname="zstd", clevel=5) if image else None, config={"write_empty_chunks": True},
        )
    root.create_group("meta").create_array("episode_ends", data=np.asarray(episode_ends), compressor=None,
                                           config={"write_empty_chunks": True})
    return path


@pytest.mark.parametrize("suffix", [".zarr", ".zarr.zip"])
@pytest.mark.parametrize("in_memory", [True, False])
def test_round_trip_directory_and_zip(tmp_path, suffix, in_memory):
    data = make_data()
    path = write_replay_buffer(tmp_path / f"demo{suffix}", data, EPISODE_ENDS)
    assert path.is_dir() == (suffix == ".zarr")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary store left behind"
    buffer = ReplayBuffer.open(path, in_memory=in_memory)
    assert buffer.in_memory == in_memory
    assert sorted(buffer.keys()) == sorted(data)
    assert (buffer.n_episodes, buffer.n_steps, len(buffer)) == (3, 15, 15)
    np.testing.assert_array_equal(buffer.episode_ends, EPISODE_ENDS)
    np.testing.assert_array_equal(buffer.episode_lengths, [4, 5, 6])
    assert buffer.episode_slice(1) == slice(4, 9) and buffer.episode_slice(-1) == slice(9, 15)
    assert isinstance(buffer["img"], np.ndarray) == in_memory
    for key, value in data.items():
        np.testing.assert_array_equal(np.asarray(buffer[key][:]), value)
        assert buffer[key].dtype == value.dtype
    episode = buffer.get_episode(2)
    np.testing.assert_array_equal(episode["action"], data["action"][9:15])
    with pytest.raises(IndexError):
        buffer.episode_slice(3)
    with pytest.raises(KeyError, match="nope"):
        buffer["nope"]
    buffer.close()


def test_written_store_has_the_reference_layout(tmp_path):
    path = write_replay_buffer(tmp_path / "demo.zarr", make_data(), EPISODE_ENDS)
    assert (path / ".zgroup").exists() and (path / "data" / "img" / ".zarray").exists()
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 2
    assert root["data/img"].chunks == (1, 8, 8, 3)
    assert root["data/state"].compressors == ()  # low-dim arrays uncompressed
    assert root["meta/episode_ends"].dtype == np.int64


def test_reads_public_style_store_and_key_selection(tmp_path):
    data = make_data()
    path = write_raw(tmp_path / "pusht_cchi_v7_replay.zarr", data, EPISODE_ENDS)
    buffer = ReplayBuffer.open(path, keys=["img", "action"], in_memory=True)
    assert buffer.keys() == ["img", "action"]
    np.testing.assert_array_equal(buffer["img"], data["img"])


def test_zip_of_a_store_directory_is_found(tmp_path):
    store = write_raw(tmp_path / "pusht.zarr", make_data(), EPISODE_ENDS)
    archive = tmp_path / "pusht.zarr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in store.rglob("*"):
            if file.is_file():
                zf.write(file, ("pusht.zarr" / file.relative_to(store)).as_posix())
    buffer = ReplayBuffer.open(archive, in_memory=False)
    assert buffer.n_steps == 15 and buffer["state"].shape == (15, 5)


def test_lazy_buffer_pickles_and_reopens(tmp_path):
    data = make_data()
    path = write_replay_buffer(tmp_path / "demo.zarr.zip", data, EPISODE_ENDS)
    buffer = ReplayBuffer.open(path, in_memory=False)
    clone = pickle.loads(pickle.dumps(buffer))
    np.testing.assert_array_equal(clone["img"][3:5], data["img"][3:5])


# ---------------------------------------------------------------- validation
IMAGE_SPEC = {"img": ArraySpec((None, None, 3), "uint8", "(n, H, W, 3) uint8 images")}


def _store_with(tmp_path, **changes):
    data = make_data()
    ends = changes.pop("episode_ends", EPISODE_ENDS)
    data.update(changes)
    for key in [k for k, v in data.items() if v is None]:
        del data[key]
    return write_raw(tmp_path / "bad.zarr", data, ends)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(img=None), r"missing key 'data/img'"),
        (dict(img=np.zeros((15, 8, 8, 3), np.float32)), r"data/img has dtype float32, expected \(n, H, W, 3\) uint8"),
        (dict(img=np.zeros((15, 8, 8), np.uint8)), r"data/img has shape \(15, 8, 8\), expected \(n, H, W, 3\) uint8"),
        (dict(img=np.zeros((15, 8, 8, 4), np.uint8)), r"data/img has shape \(15, 8, 8, 4\)"),
        (dict(episode_ends=np.array([4, 4, 15])), r"episode_ends is not strictly increasing: episode_ends\[1\] = 4"),
        (dict(episode_ends=np.array([9, 4, 15])), r"not strictly increasing"),
        (dict(episode_ends=np.array([4, 9, 14])), r"data/\w+ has 15 steps .* meta/episode_ends\[-1\] = 14"),
        (dict(episode_ends=np.array([4, 9, 16])), r"meta/episode_ends\[-1\] = 16"),
        (dict(episode_ends=np.array([0, 9, 15])), r"episode_ends\[0\] = 0, expected > 0"),
        (dict(episode_ends=np.zeros(0, np.int64)), r"empty replay buffer"),
        (dict(episode_ends=np.array([4.0, 9.0, 15.0])), r"expected a 1-D integer array"),
    ],
)
def test_validation_errors_name_file_and_key(tmp_path, changes, message):
    path = _store_with(tmp_path, **changes)
    for in_memory in (True, False):
        with pytest.raises(ReplayBufferError, match=message) as info:
            ReplayBuffer.open(path, in_memory=in_memory, specs=IMAGE_SPEC)
        assert str(path) in str(info.value)


def test_missing_groups_and_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        ReplayBuffer.open(tmp_path / "nowhere.zarr")
    root = zarr.open_group(str(tmp_path / "nodata.zarr"), mode="w", zarr_format=2)
    root.create_group("meta").create_array("episode_ends", data=np.array([3]))
    with pytest.raises(ReplayBufferError, match="missing group 'data'"):
        ReplayBuffer.open(tmp_path / "nodata.zarr")
    root = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w", zarr_format=2)
    root.create_group("data").create_array("action", data=np.zeros((3, 2)))
    with pytest.raises(ReplayBufferError, match="meta/episode_ends"):
        ReplayBuffer.open(tmp_path / "nometa.zarr")
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w", zarr_format=2).create_group("data")
    (tmp_path / "empty.zarr" / "meta").mkdir()
    with pytest.raises(ReplayBufferError):
        ReplayBuffer.open(tmp_path / "empty.zarr")
    no_images = write_raw(tmp_path / "noimg.zarr", {"action": np.zeros((15, 2), np.float32)}, EPISODE_ENDS)
    with pytest.raises(ReplayBufferError, match="missing key 'data/img'"):
        ReplayBuffer.open(no_images, specs=IMAGE_SPEC)


def test_in_memory_construction_validates_too():
    data = make_data()
    with pytest.raises(ReplayBufferError, match="empty replay buffer"):
        ReplayBuffer({}, EPISODE_ENDS)
    with pytest.raises(ReplayBufferError, match=r"data/action has 14 steps"):
        ReplayBuffer({"action": data["action"][:14]}, EPISODE_ENDS)
    buffer = ReplayBuffer(data, EPISODE_ENDS)
    assert buffer.source == "<memory>" and buffer.n_episodes == 3


# ---------------------------------------------------------------- writer
def test_writer_appends_episodes_and_is_atomic(tmp_path):
    data = make_data()
    target = tmp_path / "gen.zarr"
    with ReplayBufferWriter(target) as writer:
        start = 0
        for end in EPISODE_ENDS:
            writer.add_episode({k: v[start:end] for k, v in data.items()})
            start = end
        assert not target.exists()  # only renamed into place on close
    buffer = ReplayBuffer.open(target)
    np.testing.assert_array_equal(buffer.episode_ends, EPISODE_ENDS)
    np.testing.assert_array_equal(buffer["keypoint"], data["keypoint"])

    with pytest.raises(FileExistsError, match="gen.zarr"):
        ReplayBufferWriter(target)
    with pytest.raises(RuntimeError, match="boom"):
        with ReplayBufferWriter(target, overwrite=True) as writer:
            writer.add_episode({k: v[:4] for k, v in data.items()})
            raise RuntimeError("boom")
    assert ReplayBuffer.open(target).n_episodes == 3  # the old store is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.zarr"]

    write_replay_buffer(target, {k: v[:9] for k, v in data.items()}, EPISODE_ENDS[:2], overwrite=True)
    assert ReplayBuffer.open(target).n_episodes == 2


def test_writer_rejects_inconsistent_episodes(tmp_path):
    data = make_data()
    writer = ReplayBufferWriter(tmp_path / "x.zarr")
    writer.add_episode({k: v[:4] for k, v in data.items()})
    with pytest.raises(ReplayBufferError, match="keys"):
        writer.add_episode({"action": data["action"][:3]})
    with pytest.raises(ReplayBufferError, match="data/img"):
        writer.add_episode({**{k: v[:4] for k, v in data.items()}, "img": data["img"][:4].astype(np.float32)})
    with pytest.raises(ReplayBufferError, match="lengths"):
        writer.add_episode({**{k: v[:4] for k, v in data.items()}, "action": data["action"][:3]})
    writer.abort()
    with pytest.raises(ReplayBufferError, match="no episodes"):
        ReplayBufferWriter(tmp_path / "empty.zarr").close()
    assert list(Path(tmp_path).iterdir()) == []
