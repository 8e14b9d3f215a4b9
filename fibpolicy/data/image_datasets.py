"""Image classification datasets: bundled digits, CIFAR-10/100 pickle batches, train/val class folders.

Every dataset yields ``{"image": transform(PIL RGB image), "label": int}`` and exposes ``classes`` (class
names, index = label) and ``targets`` (all labels, for confusion matrices and class balance checks).
Transforms are given by the caller (the classification task builds them with timm's ``create_transform``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "CIFARDataset",
    "DIGITS_ASSET",
    "DigitsDataset",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "load_digits",
    "read_cifar",
    "stratified_split",
]

DIGITS_ASSET = Path(__file__).resolve().parent / "assets" / "digits.npz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
Transform = Callable[[Image.Image], Any]


class _ArrayImageDataset(Dataset):
    """Images held in memory as a (n, H, W, 3) uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], transform: Transform | None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected (n, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.targets = images, np.asarray(labels, dtype=np.int64)
        self.classes, self.transform = list(classes), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = Image.fromarray(self.images[index])
        return {"image": self.transform(image) if self.transform is not None else image, "label": int(self.targets[index])}


# ----------------------------------------------------------------------------------------------- digits


def load_digits(path: str | Path = DIGITS_ASSET) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits shipped with the package: (n, 8, 8) uint8 in 0..16, (n,) labels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python scripts/make_digits_asset.py`")
    with np.load(path) as data:
        return data["images"], data["labels"].astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with ``round(test_fraction * n_c)`` test items from every class ``c``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(test_fraction * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


class DigitsDataset(_ArrayImageDataset):
    """The bundled 8 x 8 digits, upsampled once to ``image_size`` RGB, with a fixed stratified split.

    The split depends only on ``test_fraction`` and ``seed`` (defaults: 1438 train / 359 test images).
    """

    def __init__(
        self,
        split: str = "train",
        *,
        image_size: int = 32,
        test_fraction: float = 0.2,
        seed: int = 0,
        transform: Transform | None = None,
        path: str | Path = DIGITS_ASSET,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
        images, labels = load_digits(path)
        train_idx, test_idx = stratified_split(labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
        # 0..16 ink counts -> 0..255 grey, upsampled once here rather than in every epoch's transform.
        grey = (images[idx].astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
        big = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BICUBIC)) for g in grey])
        super().__init__(np.repeat(big[..., None], 3, axis=-1), labels[idx], [str(d) for d in range(10)], transform)


# ------------------------------------------------------------------------------------------------ CIFAR

_CIFAR_LAYOUT = {
    # variant: (sub-directory of the public archive, train files, test files, meta file, names key, labels key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}
_CIFAR_URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _unpickle(path: Path) -> dict[str, Any]:
    # The public batches are Python-2 pickles of dicts with bytes keys.
    with path.open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_cifar(root: str | Path, split: str, variant: str = "cifar10") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (n, 32, 32, 3) uint8, labels (n,), class names) from the public "python version" batches.

    ``root`` is the extracted directory (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
    CIFAR-100 uses the 100 fine labels.
    """
    if variant not in _CIFAR_LAYOUT:
        raise ValueError(f"variant must be one of {sorted(_CIFAR_LAYOUT)}, got {variant!r}")
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR split must be 'train' or 'test', got {split!r}")
    subdir, train_files, test_files, meta_file, names_key, labels_key = _CIFAR_LAYOUT[variant]
    root = Path(root)
    if not (root / meta_file).is_file() and (root / subdir / meta_file).is_file():
        root = root / subdir
    files = train_files if split == "train" else test_files
    missing = [name for name in (meta_file, *files) if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a {variant} 'python version' directory: missing {missing}. "
            f"Download and extract {_CIFAR_URL[variant]} and point the task's root at {subdir}/"
        )
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(root / meta_file)[names_key]]
    images, labels = [], []
    for name in files:
        batch = _unpickle(root / name)
        if "data" not in batch or labels_key not in batch:
            raise ValueError(f"{root / name} has keys {sorted(batch)}; expected 'data' and {labels_key!r}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{root / name}: 'data' has shape {data.shape}, expected (n, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # rows are R, G, B planes
        labels.append(np.asarray(batch[labels_key], dtype=np.int64))
    labels_all = np.concatenate(labels)
    if labels_all.min() < 0 or labels_all.max() >= len(names):
        raise ValueError(f"{root}: labels out of range for {len(names)} classes")
    return np.ascontiguousarray(np.concatenate(images)), labels_all, names


class CIFARDataset(_ArrayImageDataset):
    """CIFAR-10 or CIFAR-100 (fine labels) read from the public pickle batches in a user directory."""

    def __init__(self, root: str | Path, split: str = "train", *, variant: str = "cifar10", transform: Transform | None = None) -> None:
        images, labels, names = read_cifar(root, split, variant)
        super().__init__(images, labels, names, transform)


# ------------------------------------------------------------------------------------------ imagefolder


def _scan_class_folders(split_dir: Path, class_to_idx: dict[str, int] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir} does not exist (expected one sub-directory of images per class)")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{split_dir} has no class sub-directories")
    if class_to_idx is None:
        class_to_idx = {p.name: i for i, p in enumerate(folders)}
    unknown = [p.name for p in folders if p.name not in class_to_idx]
    if unknown:
        raise ValueError(f"{split_dir} has class folders absent from the training split: {unknown[:10]}")
    samples = [
        (f, class_to_idx[folder.name])
        for folder in folders
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise FileNotFoundError(f"{split_dir} has no images with extensions {IMAGE_EXTENSIONS}")
    return samples, sorted(class_to_idx, key=class_to_idx.__getitem__)


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/*.jpg`` (ImageNet / Tiny-ImageNet layout); class indices come from ``train/``.

    The evaluation split may lack some classes but may not add new ones, so labels always agree with the
    classifier trained on ``train/``.
    """

    def __init__(self, root: str | Path, split: str = "train", *, train_split: str = "train", transform: Transform | None = None) -> None:
        root = Path(root)
        _, classes = _scan_class_folders(root / train_split, None) if split != train_split else (None, None)
        mapping = {name: i for i, name in enumerate(classes)} if classes is not None else None
        self.samples, self.classes = _scan_class_folders(root / split, mapping)
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except OSError as err:
            raise OSError(f"cannot read image {path}: {err}") from err
        return {"image": self.transform(image) if self.transform is not None else image, "label": label}
