"""Confusion matrices: counts from labels and predictions, and a PNG drawn with Pillow (no matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path, write_text

__all__ = ["confusion_matrix", "render_confusion_matrix", "write_confusion_matrix"]


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    targets, predictions = np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    if targets.shape != predictions.shape:
        raise ValueError(f"targets {targets.shape} and predictions {predictions.shape} differ in shape")
    if len(targets) and (min(targets.min(), predictions.min()) < 0 or max(targets.max(), predictions.max()) >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(targets * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _blues(fraction: np.ndarray) -> np.ndarray:
    # White -> dark blue, like the usual "Blues" colour map.
    light, dark = np.array([247, 251, 255], float), np.array([8, 48, 107], float)
    return (light + (dark - light) * fraction[..., None]).round().astype(np.uint8)


def render_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Image.Image:
    """An RGB image of the row-normalised matrix: cell colour = fraction of the true class (grey rows: class
    absent from the test set), counts in the cells and class names on the axes up to 30 classes."""
    n = matrix.shape[0]
    if matrix.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"matrix {matrix.shape} does not match {len(class_names)} class names")
    font = ImageFont.load_default()
    labelled = n <= 30
    cell = max(6, min(48, 720 // max(n, 1)))
    names = [str(c) for c in class_names]
    label_w = (max(int(font.getlength(s)) for s in names) + 10) if labelled else 10
    top, left = 40 + label_w, label_w + 40  # title + "predicted", rotated column names; "true", row names
    width, height = left + n * cell + 12, top + n * cell + 12
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    rows = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    colours = _blues(fraction)
    colours[rows[:, 0] == 0] = 225  # grey rows: no test sample of that class
    grid = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    image.paste(Image.fromarray(grid), (left, top))
    draw.rectangle([left - 1, top - 1, left + n * cell, top + n * cell], outline="black")

    draw.text((8, 6), title, fill="black", font=font)
    draw.text((left + (n * cell - font.getlength("predicted")) / 2, 22), "predicted", fill="black", font=font)
    caption = Image.new("RGB", (int(font.getlength("true")) + 4, 12), "white")
    ImageDraw.Draw(caption).text((0, 0), "true", fill="black", font=font)
    image.paste(caption.rotate(90, expand=True), (4, top + (n * cell) // 2 - 10))
    if labelled:
        for i, name in enumerate(names):
            y = top + i * cell + (cell - 10) // 2
            draw.text((left - 6 - int(font.getlength(name)), y), name, fill="black", font=font)
            text = Image.new("RGB", (int(font.getlength(name)) + 4, 12), "white")
            ImageDraw.Draw(text).text((0, 0), name, fill="black", font=font)
            rotated = text.rotate(90, expand=True)
            image.paste(rotated, (left + i * cell + (cell - rotated.width) // 2, top - 4 - rotated.height))
        if cell >= 18:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        s = str(int(matrix[i, j]))
                        ink = "white" if fraction[i, j] > 0.5 else "black"
                        draw.text((left + j * cell + (cell - font.getlength(s)) / 2, top + i * cell + (cell - 10) / 2), s, fill=ink, font=font)
    return image


def write_confusion_matrix(
    path: str | Path, targets: np.ndarray, predictions: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """Write the PNG at ``path`` and the counts next to it as CSV (``<stem>.csv``); returns the matrix."""
    path = Path(path)
    matrix = confusion_matrix(targets, predictions, len(class_names))
    with atomic_path(path, suffix=path.suffix) as tmp:
        render_confusion_matrix(matrix, class_names, title).save(tmp)
    header = ",".join(["true\\predicted", *[str(c).replace(",", " ") for c in class_names]])
    rows = [",".join([str(c).replace(",", " "), *map(str, matrix[i])]) for i, c in enumerate(class_names)]
    write_text(path.with_suffix(".csv"), "\n".join([header, *rows]) + "\n")
    return matrix
