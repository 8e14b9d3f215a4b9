"""Write ``fibpolicy/data/assets/digits.npz`` from scikit-learn's bundled 8 x 8 handwritten digits.

    python scripts/make_digits_asset.py                         # from an installed scikit-learn
    python scripts/make_digits_asset.py --source scikit_learn-*.whl   # from a downloaded wheel (no install)
    python scripts/make_digits_asset.py --source digits.csv.gz        # from the CSV inside the wheel

The data (1797 images, integers 0..16, 10 classes) is the test set of the UCI "Optical Recognition of
Handwritten Digits" dataset (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), as scikit-learn ships it in
``sklearn/datasets/data/digits.csv.gz`` (64 pixel columns, then the label, one image per row).
The package ships the result so that ``task=digits`` needs neither scikit-learn nor a download.
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "sklearn/datasets/data/digits.csv.gz"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fibpolicy" / "data" / "assets" / "digits.npz"


def read_digits_csv(raw_gz: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 8, 8) uint8 in 0..16, labels (n,) uint8) from the gzip-compressed CSV bytes."""
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw_gz)), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"expected 65 columns (64 pixels + label) in the digits CSV, got shape {table.shape}")
    images, labels = table[:, :64], table[:, 64]
    if images.min() < 0 or images.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise ValueError("digits CSV values out of range (pixels must be 0..16, labels 0..9)")
    return images.reshape(-1, 8, 8).astype(np.uint8), labels.astype(np.uint8)


def load_source(source: str | None) -> bytes:
    """The CSV bytes from a wheel, a ``.csv.gz`` file, or the installed scikit-learn."""
    if source is None:
        import sklearn  # noqa: F401  (only this script needs it)

        return (Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz").read_bytes()
    path = Path(source)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return wheel.read(CSV_IN_WHEEL)
    return path.read_bytes()


def main() -> None:
    """Convert and write the asset, then print what was written."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="scikit-learn wheel or digits.csv.gz (default: installed sklearn)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args()
    images, labels = read_digits_csv(load_source(args.source))
    if images.shape != (1797, 8, 8):
        raise ValueError(f"expected 1797 digits images, got {images.shape}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images, labels=labels)
    print(f"wrote {out}: {len(images)} images, class counts {np.bincount(labels).tolist()}, {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
