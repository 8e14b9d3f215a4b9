"""The generic sequence dataset, driven by the PushT task configs' shape_meta, on small stores in the public layout."""


import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import task_shape_meta
from fibpolicy.data import ReplayBufferError, SequenceDataset, write_replay_buffer

WINDOW = dict(horizon=16, n_obs_steps=2, n_action_steps=8)
IMAGE_META = task_shape_meta("pusht_image")
LOWDIM_META = task_shape_meta("pusht_lowdim")


def PushTImageDataset(path, **kwargs):
    return SequenceDataset(path, IMAGE_META, **{**WINDOW, **kwargs})


def PushTLowdimDataset(path, **kwargs):
    return SequenceDataset(path, LOWDIM_META, **{**WINDOW, **kwargs})

LENGTHS = [12, 20, 9, 15, 18, 11, 14, 10, 16, 13]


def pusht_store(path, lengths=LENGTHS, image=96, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    data = {
        "img": rng.integers(0, 256, size=(n, image, image, 3), dtype=np.uint8),
        "state": rng.uniform(0, 512, size=(n, 5)).astype(np.float32),
        "keypoint": rng.uniform(0, 512, size=(n, 9, 2)).astype(np.float32),
        "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
        "n_contacts": np.zeros((n, 1), np.float32),
    }
    data.update(overrides)
    return write_replay_buffer(path, data, np.cumsum(lengths)), data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return pusht_store(tmp_path_factory.mktemp("pusht") / "pusht.zarr")


def test_image_sample_shapes_values_and_padding(store):
    path, data = store
    ds = PushTImageDataset(path, val_ratio=0.0)
    assert len(ds) == sum(n - 7 for n in LENGTHS)
    sample = ds[0]
    image, pos, action = sample["obs"]["image"], sample["obs"]["agent_pos"], sample["action"]
    assert image.shape == (2, 3, 96, 96) and image.dtype == torch.float32
    assert pos.shape == (2, 2) and action.shape == (16, 2) and action.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # first window of episode 0 starts one step early: obs step 0 repeats frame 0
    expected = torch.from_numpy(data["img"][[0, 0]]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(pos, torch.from_numpy(data["state"][[0, 0], :2]))
    torch.testing.assert_close(action, torch.from_numpy(data["action"][np.clip(np.arange(16) - 1, 0, LENGTHS[0] - 1)]))
    assert ds.shape_meta.obs["image"].shape == (3, 96, 96)

    full = PushTImageDataset(path, val_ratio=0.0, load_full_obs=True, in_memory=False)
    assert full[0]["obs"]["image"].shape == (16, 3, 96, 96)
    torch.testing.assert_close(full[5]["obs"]["image"][:2], ds[5]["obs"]["image"])


def test_split_max_train_episodes_and_validation(store):
    path, _ = store
    ds = PushTImageDataset(path, val_ratio=0.2, max_train_episodes=5, seed=42)
    val = ds.get_validation_dataset()
    assert ds.n_episodes == 5 and val.n_episodes == 2 and ds.split == "train" and val.split == "val"
    assert not (ds.train_mask & ds.val_mask).any()
    assert len(ds) == sum(n - 7 for n, m in zip(LENGTHS, ds.train_mask) if m)
    assert len(val) == sum(n - 7 for n, m in zip(LENGTHS, ds.val_mask) if m)
    again = PushTImageDataset(path, val_ratio=0.2, max_train_episodes=5, seed=42)
    np.testing.assert_array_equal(again.train_mask, ds.train_mask)
    assert len(PushTImageDataset(path, val_ratio=0.0).get_validation_dataset()) == 0


def test_normalizer_is_fitted_on_training_episodes(store):
    path, data = store
    ds = PushTImageDataset(path, val_ratio=0.2, max_train_episodes=4, seed=3)
    normalizer = ds.get_normalizer()
    assert sorted(normalizer.keys()) == ["action", "agent_pos", "image"]
    rows = np.concatenate([np.arange(s, e) for s, e, m in zip(
        np.cumsum([0, *LENGTHS[:-1]]), np.cumsum(LENGTHS), ds.train_mask) if m])
    train_action = torch.from_numpy(data["action"][rows])
    out = normalizer["action"].normalize(train_action)
    torch.testing.assert_close(out.min(0).values, -torch.ones(2))
    torch.testing.assert_close(out.max(0).values, torch.ones(2))
    all_fit = PushTImageDataset(path, val_ratio=0.2, max_train_episodes=4, seed=3, fit_on="all").get_normalizer()
    torch.testing.assert_close(all_fit["agent_pos"].input_max, torch.from_numpy(data["state"][:, :2].max(0)))


def test_lowdim_sample_and_normalizer(store):
    path, data = store
    ds = PushTLowdimDataset(path, val_ratio=0.0)
    sample = ds[3]
    assert sample["obs"]["keypoint"].shape == (2, 18) and sample["obs"]["agent_pos"].shape == (2, 2)
    assert ds.shape_meta.obs["keypoint"].shape == (18,)
    # window 3 of episode 0 starts at frame 2; keypoints flattened x0, y0, x1, y1, ...
    torch.testing.assert_close(sample["obs"]["keypoint"][0], torch.from_numpy(data["keypoint"][2].reshape(-1)))
    normalizer = ds.get_normalizer()
    assert sorted(normalizer.keys()) == ["action", "agent_pos", "keypoint"]
    assert normalizer["keypoint"].dim == 18


def test_dataloader_collates_nested_batches(store):
    path, _ = store
    loader = DataLoader(PushTLowdimDataset(path), batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch["obs"]["keypoint"].shape == (4, 2, 18) and batch["action"].shape == (4, 16, 2)


def test_bad_stores_are_reported(tmp_path):
    small = [9, 10]
    n = sum(small)
    path, _ = pusht_store(tmp_path / "f.zarr", small, img=np.zeros((n, 96, 96, 3), np.float32))
    with pytest.raises(ReplayBufferError, match=r"f.zarr.*data/img has dtype float32, expected \(n, 96, 96, 3\) uint8"):
        PushTImageDataset(path)
    path, _ = pusht_store(tmp_path / "s.zarr", small, keypoint=np.zeros((n, 8, 2), np.float32))
    with pytest.raises(ReplayBufferError, match=r"s.zarr: 'keypoint': source keypoint gives 16 values .* shape \[18\]"):
        PushTLowdimDataset(path)
    path, _ = pusht_store(tmp_path / "s1.zarr", small, state=np.zeros((n, 1), np.float32))
    with pytest.raises(ReplayBufferError, match=r"s1.zarr: 'agent_pos': source state\[:2\] gives 1 values"):
        PushTLowdimDataset(path)
    no_keypoints = write_replay_buffer(tmp_path / "nokp.zarr", {"state": np.zeros((n, 5), np.float32),
                                       "action": np.zeros((n, 2), np.float32)}, np.cumsum(small))
    with pytest.raises(ReplayBufferError, match=r"nokp.zarr: missing key 'data/keypoint'"):
        PushTLowdimDataset(no_keypoints)
    with pytest.raises(FileNotFoundError, match="missing.zarr does not exist"):
        PushTLowdimDataset(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="n_action_steps"):
        PushTLowdimDataset(pusht_store(tmp_path / "ok.zarr", small)[0], horizon=8, n_obs_steps=2, n_action_steps=8)


def test_per_dimension_action_groups_and_a_sliced_source(tmp_path):
    lengths = [10, 12]
    n = sum(lengths)
    rng = np.random.default_rng(0)
    action = np.concatenate([rng.uniform(-3, 5, (n, 3)), rng.normal(size=(n, 6)), rng.uniform(0, 1, (n, 1))], 1)
    path = write_replay_buffer(tmp_path / "abs.zarr", {"pose": rng.normal(size=(n, 7)).astype(np.float32),
                                                        "action": action.astype(np.float32)}, np.cumsum(lengths))
    meta = {"obs": {"eef_pos": {"shape": [3], "source": "pose[:3]"}, "eef_quat": {"shape": [4], "source": "pose[3:]", "norm": "identity"}},
            "action": {"shape": [10], "norm": [{"dims": 3, "mode": "limits"}, {"dims": 6, "mode": "identity"}, {"dims": 1, "mode": "limits"}]}}
    ds = SequenceDataset(path, meta, horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.0)
    norm = ds.get_normalizer()
    out = norm["action"].normalize(torch.from_numpy(action.astype(np.float32)))
    torch.testing.assert_close(out[:, 3:9], torch.from_numpy(action[:, 3:9].astype(np.float32)))  # rot6d untouched
    for dims in (slice(0, 3), slice(9, 10)):
        torch.testing.assert_close(out[:, dims].min(0).values, -torch.ones(dims.stop - dims.start))
        torch.testing.assert_close(out[:, dims].max(0).values, torch.ones(dims.stop - dims.start))
    sample = ds[1]
    pose = ds.replay_buffer["pose"]
    torch.testing.assert_close(sample["obs"]["eef_quat"][1], torch.from_numpy(pose[1, 3:]))
    torch.testing.assert_close(sample["obs"]["eef_pos"][1], torch.from_numpy(pose[1, :3]))
    with pytest.raises(ValueError, match="groups cover 9 dimensions, the shape has 10"):
        SequenceDataset(path, {**meta, "action": {"shape": [10], "norm": [{"dims": 3, "mode": "limits"}, {"dims": 6, "mode": "identity"}]}}, horizon=8, n_obs_steps=2, n_action_steps=4)


def test_lazy_zip_store_in_dataloader_workers_matches_in_memory(tmp_path):
    path, _ = pusht_store(tmp_path / "pusht.zarr.zip", lengths=[12, 20, 15])
    lazy = PushTImageDataset(path, in_memory=False, val_ratio=0.0)
    lazy[0]  # the parent has the zip open before the workers fork
    memory = PushTImageDataset(path, in_memory=True, val_ratio=0.0)
    for a, b in zip(DataLoader(lazy, batch_size=8, num_workers=2), DataLoader(memory, batch_size=8)):
        torch.testing.assert_close(a["obs"]["image"], b["obs"]["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["action"], b["action"], rtol=0, atol=0)
