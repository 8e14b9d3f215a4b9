"""Image classification datasets on files the tests write: digits asset, CIFAR pickle batches, class folders."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fibpolicy.data import CIFARDataset, DigitsDataset, ImageFolderDataset, load_digits, read_cifar, stratified_split
from fibpolicy.data.image_datasets import DIGITS_ASSET
from fibpolicy.training.classification_task import image_transforms

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_asset_is_small_and_complete():
    assert DIGITS_ASSET.stat().st_size < 200_000
    images, labels = load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8 and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_fixed_stratified_and_disjoint():
    _, labels = load_digits()
    train, test = stratified_split(labels, 0.2, seed=0)
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    assert np.array_equal(test, stratified_split(labels, 0.2, seed=0)[1])
    assert not np.array_equal(test, stratified_split(labels, 0.2, seed=1)[1])
    per_class = np.bincount(labels[test]) / np.bincount(labels)
    assert np.all(np.abs(per_class - 0.2) < 0.01)
    tr, te = DigitsDataset("train", image_size=32), DigitsDataset("test", image_size=32)
    assert (len(tr), len(te)) == (len(train), len(test)) == (1438, 359)
    item = te[0]
    assert item["image"].size == (32, 32) and item["label"] == labels[test[0]]
    assert te.classes == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="split"):
        DigitsDataset("val")


def _write_cifar(root, variant, rng):
    """Tiny CIFAR directories in the public layout (Python-2 style pickles with bytes keys)."""
    def dump(name, obj):
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    root.mkdir(parents=True)
    if variant == "cifar10":
        names = [f"class{i}".encode() for i in range(10)]
        dump("batches.meta", {b"label_names": names, b"num_cases_per_batch": 4})
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
    else:
        dump("meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20})
        files, key = ["train", "test"], b"fine_labels"
    written = {}
    for name in files:
        images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10 if variant == "cifar10" else 100, 3).tolist()
        # The public rows are the R plane, then G, then B, each row-major.
        dump(name, {b"data": images.transpose(0, 3, 1, 2).reshape(3, -1), key: labels, b"batch_label": b"x"})
        written[name] = (images, labels)
    return written


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_pickle_batches_read_back_exactly(tmp_path, variant):
    sub = "cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python"
    written = _write_cifar(tmp_path / sub, variant, np.random.default_rng(0))
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if variant == "cifar10" else ["train"]
    test_file = "test_batch" if variant == "cifar10" else "test"
    # Either the extracted directory or its parent.
    images, labels, names = read_cifar(tmp_path, "train", variant)
    assert np.array_equal(images, np.concatenate([written[f][0] for f in train_files]))
    assert labels.tolist() == sum((written[f][1] for f in train_files), [])
    assert len(names) == (10 if variant == "cifar10" else 100)
    ds = CIFARDataset(tmp_path / sub, "test", variant=variant, transform=np.asarray)
    assert len(ds) == 3 and np.array_equal(ds[1]["image"], written[test_file][0][1])
    assert ds[1]["label"] == written[test_file][1][1]


def test_cifar_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        read_cifar(tmp_path, "train", "cifar10")


def _write_folder(root, classes, per_class, rng):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_uses_train_class_indices(tmp_path):
    rng = np.random.default_rng(0)
    _write_folder(tmp_path / "train", ["ant", "bee", "cat"], 2, rng)
    _write_folder(tmp_path / "val", ["bee", "cat"], 1, rng)  # a class may be absent from val
    train = ImageFolderDataset(tmp_path, "train")
    val = ImageFolderDataset(tmp_path, "val")
    assert train.classes == val.classes == ["ant", "bee", "cat"]
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2] and val.targets.tolist() == [1, 2]
    assert val[0]["image"].mode == "RGB" and val[0]["label"] == 1

    _write_folder(tmp_path / "val", ["dog"], 1, rng)
    with pytest.raises(ValueError, match="dog"):
        ImageFolderDataset(tmp_path, "val")
    (tmp_path / "train" / "ant" / "broken.png").write_bytes(b"not a png")
    with_broken = ImageFolderDataset(tmp_path, "train")
    index = [p.name for p, _ in with_broken.samples].index("broken.png")
    with pytest.raises(OSError, match="broken.png"):
        with_broken[index]
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolderDataset(tmp_path / "missing", "train")


def test_image_transforms_follow_the_recipe_and_survive_zero_bit_posterize():
    train, test = image_transforms(32, {"auto_augment": "rand-m10-mstd0-inc1-n3-p1.0", "re_prob": 0.25, "crop_pct": 1.0, "hflip": 0.0})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    # Magnitude 10 makes timm's increasing posterize keep 0 bits on every call (Pillow >= 12 refuses 0).
    torch.manual_seed(0)
    for _ in range(60):
        assert train(image).shape == (3, 32, 32)
    assert torch.equal(test(image), test(image))
    with pytest.raises(ValueError, match="colour_jitter"):
        image_transforms(32, {"colour_jitter": 0.4})
