"""Image and video classification with the Fibottention encoder, on the shared trainer.

Config contract (``kind: classification`` tasks; see ``config/task/digits.yaml`` and friends):

- ``encoder``: the backbone, as for the policy: ``model_name`` (a timm-registered name, e.g.
  ``vit_fib_tiny_patch16_224``) and its keywords (``attention: dense`` for the dense twin, ...).
  ``pool`` (the policy's feature pooling) does not apply: classifiers pool with ``task.global_pool``
  (``token``, the CLS head, by default).
- ``task``: ``input`` (``image`` | ``video``), ``backbone`` (geometry the data dictates: ``img_size``,
  ``patch_size``, ``num_frames``, ...; overrides the encoder's), ``transform`` (data-specific
  augmentation), ``train_dataset`` / ``test_dataset`` (``_target_`` classes taking ``transform=``),
  optional ``limit_train`` / ``limit_test`` and, for video, ``image_weights`` (start from an image ViT).
- ``training``: a classification recipe (the tasks' default ``training=classification``): ``drop_path_rate``,
  ``label_smoothing``, ``augment`` (timm ``create_transform`` keywords for images), ``mixup``,
  ``eval_batch_size``, ``ema`` and the ``trainer`` (optimiser factory with layer decay included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import timm
import torch.nn as nn
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import AugmentOp, posterize as timm_posterize
from torch.utils.data import Dataset, Subset

from ..atomic import write_json
from ..checkpoint import MODEL_FILE, has_ema, load_config, load_weights, read_meta, resolve_checkpoint
from ..device import default_device
from ..shape_meta import plain
from ..data.video_datasets import VideoClipTransform
from ..encoders.video_vit import load_image_weights, video_variant
from .classifier import ClassificationEvaluator, Classifier
from .confusion import write_confusion_matrix
from .task_setup import fit, make_trainer, start_run

__all__ = [
    "ClassificationData",
    "build_backbone",
    "build_classifier",
    "build_datasets",
    "evaluate_classifier",
    "image_transforms",
    "train_classifier",
]

INPUTS = {"image": 4, "video": 5}  # input kind -> tensor dims of a batch
# create_transform keywords, by the side that uses them (the rest of its keywords are not exposed).
TRAIN_TRANSFORM_KEYS = frozenset({
    "scale", "ratio", "hflip", "vflip", "color_jitter", "color_jitter_prob", "grayscale_prob", "gaussian_blur_prob",
    "auto_augment", "interpolation", "mean", "std", "re_prob", "re_mode", "re_count", "train_crop_mode",
})
EVAL_TRANSFORM_KEYS = frozenset({"interpolation", "mean", "std", "crop_pct", "crop_mode"})
VIDEO_TRANSFORM_KEYS = frozenset({"crop_size", "jitter_scale", "test_scale", "hflip", "mean", "std"})


@dataclass
class ClassificationData:
    """The datasets of a classification task and its class names (index = label)."""

    train: Dataset | None
    test: Dataset
    classes: list[str]


def _input_kind(cfg: DictConfig) -> str:
    kind = cfg.task.get("input", "image")
    if kind not in INPUTS:
        raise ValueError(f"task.input={kind!r} is not supported (expected one of {sorted(INPUTS)})")
    return kind


# ------------------------------------------------------------------------------------------- transforms


def _posterize_any_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    # timm's increasing-severity posterize reaches 0 bits at magnitude 10 (rand-m9-mstd0.5-inc1 gets
    # there through its magnitude noise). Pillow < 12 turned 0 bits into a black image; Pillow >= 12
    # raises instead, which would crash training at a random step. Keep the old result.
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform: Any) -> None:
    """Give every timm posterize op inside ``transform`` (RandAugment / AutoAugment / AugMix) 0-bit support."""
    stack = [transform]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):  # AutoAugment's policy is a list of sub-policies (lists of ops)
            stack.extend(node)
            continue
        if isinstance(node, AugmentOp):
            if node.aug_fn is timm_posterize:
                node.aug_fn = _posterize_any_bits
            continue
        for attr in ("transforms", "ops", "policy"):
            children = getattr(node, attr, None)
            if isinstance(children, (list, tuple)):
                stack.append(children)


def image_transforms(image_size: int, options: dict[str, Any]) -> tuple[Callable, Callable]:
    """(train, eval) transforms from timm's ``create_transform``; ``options`` are its keywords.

    Training keywords (RandAugment, random erasing, crop scale, flips, ...) go to the training transform,
    ``crop_pct`` / ``crop_mode`` to the evaluation one, ``interpolation`` / ``mean`` / ``std`` to both.
    """
    unknown = sorted(set(options) - TRAIN_TRANSFORM_KEYS - EVAL_TRANSFORM_KEYS)
    if unknown:
        raise ValueError(f"unknown image transform keys {unknown} (task.transform / training.augment); "
                         f"expected some of {sorted(TRAIN_TRANSFORM_KEYS | EVAL_TRANSFORM_KEYS)}")
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if v is not None}
    train = create_transform(image_size, is_training=True, **{k: v for k, v in opts.items() if k in TRAIN_TRANSFORM_KEYS})
    _patch_posterize(train)
    test = create_transform(image_size, is_training=False, **{k: v for k, v in opts.items() if k in EVAL_TRANSFORM_KEYS})
    return train, test


def _transforms(cfg: DictConfig) -> tuple[Callable, Callable]:
    task_opts = plain(cfg.task.get("transform")) or {}
    if _input_kind(cfg) == "image":
        # The recipe's augmentation first; the task overrides what its data needs (e.g. no flips for digits).
        recipe = plain(cfg.training.get("augment")) or {}
        return image_transforms(int(cfg.task.image_size), {**recipe, **task_opts})
    unknown = sorted(set(task_opts) - VIDEO_TRANSFORM_KEYS)
    if unknown:
        raise ValueError(f"unknown video transform keys {unknown} in task.transform; expected some of {sorted(VIDEO_TRANSFORM_KEYS)}")
    task_opts.setdefault("crop_size", int(cfg.task.image_size))
    return VideoClipTransform(True, **task_opts), VideoClipTransform(False, **task_opts)


# --------------------------------------------------------------------------------------------- datasets


def _limited(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    if limit < 1:
        raise ValueError(f"dataset limits must be >= 1, got {limit}")
    # A seeded random subset rather than the first items: class-folder datasets are sorted by class.
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:limit])
    return Subset(dataset, keep.tolist())


def build_datasets(cfg: DictConfig, *, train: bool = True) -> ClassificationData:
    """Instantiate ``task.train_dataset`` (if ``train``) and ``task.test_dataset`` with their transforms."""
    for key in ("train_dataset", "test_dataset"):
        if cfg.task.get(key) is None:
            raise ValueError(f"task {cfg.task.get('name')!r} has no task.{key} (expected a _target_ dataset config)")
    train_tf, test_tf = _transforms(cfg)
    test = instantiate(cfg.task.test_dataset, transform=test_tf, _convert_="all")
    classes = list(test.classes)
    train_ds = None
    if train:
        train_ds = instantiate(cfg.task.train_dataset, transform=train_tf, _convert_="all")
        if list(train_ds.classes) != classes:
            raise ValueError(f"task.train_dataset and task.test_dataset disagree on the classes: "
                             f"{list(train_ds.classes)[:5]}... vs {classes[:5]}...")
        train_ds = _limited(train_ds, cfg.task.get("limit_train"), int(cfg.seed))
    return ClassificationData(train_ds, _limited(test, cfg.task.get("limit_test"), int(cfg.seed) + 1), classes)


# ---------------------------------------------------------------------------------------------- models


def build_backbone(cfg: DictConfig, num_classes: int) -> nn.Module:
    """The timm classifier the ``encoder`` group names, shaped by ``task.backbone`` (image or video ViT)."""
    kwargs = {k: v for k, v in (plain(cfg.encoder) or {}).items() if k not in ("_target_", "_partial_", "pool")}
    model_name = kwargs.pop("model_name", None)
    if model_name is None:
        raise ValueError(
            f"encoder {cfg.encoder.get('_target_')!r} names no timm model_name; classification needs a timm "
            "backbone such as encoder=vit_fib_tiny or encoder=vit_dense_tiny"
        )
    kwargs.update(plain(cfg.task.get("backbone")) or {})
    if _input_kind(cfg) == "video":
        model_name = video_variant(model_name)
    return timm.create_model(
        model_name, num_classes=num_classes, global_pool=cfg.task.get("global_pool", "token"),
        drop_path_rate=float(cfg.training.get("drop_path_rate", 0.0)), **kwargs,
    )


def build_classifier(cfg: DictConfig, classes: Sequence[str]) -> Classifier:
    """Backbone plus loss for the task's input kind, with the recipe's label smoothing and mixup."""
    kind = _input_kind(cfg)
    mixup = plain(cfg.training.get("mixup")) or {}
    if kind == "video" and (mixup.get("cutmix_alpha", 0.0) > 0 or mixup.get("cutmix_minmax") is not None):
        raise ValueError("training.mixup cutmix is image-only (timm's CutMix cuts the last two dims); set cutmix_alpha=0 for video")
    return Classifier(
        build_backbone(cfg, len(classes)), num_classes=len(classes), input_key=kind, input_ndim=INPUTS[kind],
        label_smoothing=float(cfg.training.get("label_smoothing", 0.0)), mixup=mixup,
    )


# ------------------------------------------------------------------------------------------- training


def _check_recipe(cfg: DictConfig) -> None:
    if cfg.training.get("recipe") != "classification":
        raise ValueError(
            f"task={cfg.task.get('name')} is a classification task but the training config is not a classification "
            f"recipe (training.recipe={cfg.training.get('recipe')!r}); use training=classification "
            "(the task's default) or training=classification_smoke"
        )


def train_classifier(cfg: DictConfig) -> dict[str, Any]:
    """Train the classifier ``cfg`` describes; writes the run directory and returns the last metrics.

    Per epoch: ``test/top1``, ``test/top5`` (percent) and ``test/loss`` on the held-out split, logged to
    ``metrics.jsonl`` and TensorBoard; top-k checkpoints by ``test/top1``; at the end
    ``confusion_matrix.png`` (+ ``.csv``) of the final evaluation.
    """
    _check_recipe(cfg)
    with start_run(cfg) as run_dir:
        data = build_datasets(cfg)
        model = build_classifier(cfg, data.classes)
        if cfg.task.get("image_weights"):
            if _input_kind(cfg) != "video":
                raise ValueError("task.image_weights initialises a video ViT from an image ViT; this is an image task")
            report = load_image_weights(model.backbone, _weights_file(cfg.task.image_weights))
            print(f"[fibpolicy] video ViT from image weights {cfg.task.image_weights}: "
                  + ", ".join(f"{k}={len(v)}" for k, v in report.items()))
        trainer_cfg = cfg.training.trainer
        evaluator = ClassificationEvaluator(
            data.test, batch_size=int(cfg.training.get("eval_batch_size", trainer_cfg.batch_size)),
            num_workers=int(trainer_cfg.get("num_workers", 0)), progress=bool(trainer_cfg.get("progress", False)),
            precision=trainer_cfg.get("precision", "auto"),
        )
        trainer = make_trainer(cfg, model=model, train_dataset=data.train, evaluator=evaluator)
        metrics = fit(trainer, cfg)
        if trainer.dist.is_main and evaluator.last_predictions is not None:
            top1 = metrics.get("test/top1", float("nan"))
            write_confusion_matrix(
                run_dir / "confusion_matrix.png", evaluator.last_targets, evaluator.last_predictions, data.classes,
                title=f"{cfg.task.name}, epoch {trainer.epoch}: test top-1 {top1:.2f}%",
            )
        return metrics


# ----------------------------------------------------------------------------------------- evaluation


def evaluate_classifier(
    checkpoint: str | Path,
    *,
    output_dir: str | Path,
    config: DictConfig | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    num_clips: int | None = None,
    ema: bool | None = None,
) -> dict[str, Any]:
    """Re-score a classification checkpoint on its task's test split; writes ``eval.json`` and
    ``confusion_matrix.png`` in ``output_dir`` and returns the record.

    Uses the EMA weights when the checkpoint has them (``ema=False`` for the raw ones). ``num_clips``
    changes the number of test-time clips of a video-list task (multi-clip averaging). ``config``: the
    checkpoint's config when the caller has already read it.
    """
    path = resolve_checkpoint(checkpoint)
    cfg = load_config(path) if config is None else config
    if cfg.task.get("kind") != "classification":
        raise ValueError(f"{path} is a {cfg.task.get('kind', 'policy')!r} checkpoint, not a classification one")
    if num_clips is not None:
        if "num_clips" not in cfg.task.test_dataset:
            raise ValueError(f"task {cfg.task.name!r}: its test dataset has no num_clips option")
        cfg.task.test_dataset.num_clips = int(num_clips)
    data = build_datasets(cfg, train=False)
    model = build_classifier(cfg, data.classes)
    use_ema = has_ema(path) if ema is None else ema
    load_weights(model, path, ema=use_ema)
    model.to(default_device(device)).eval()
    # At the precision the run evaluated in during training, so the scores match its metrics.
    evaluator = ClassificationEvaluator(data.test, batch_size=batch_size or int(cfg.training.get("eval_batch_size", 256)),
                                        num_workers=num_workers, precision=cfg.training.trainer.get("precision", "auto"))
    meta = read_meta(path)
    metrics = evaluator(model, int(meta.get("epoch", 0)))
    output_dir = Path(output_dir)
    matrix = write_confusion_matrix(
        output_dir / "confusion_matrix.png", evaluator.last_targets, evaluator.last_predictions, data.classes,
        title=f"{cfg.task.name} {path.name}: test top-1 {metrics['test/top1']:.2f}%",
    )
    support = matrix.sum(axis=1)
    record = {
        "checkpoint": str(path.resolve()),
        "task": str(cfg.task.name),
        "epoch": meta.get("epoch"),
        "weights": "ema" if use_ema else "model",
        "top1": metrics["test/top1"],
        "top5": metrics["test/top5"],
        "loss": metrics["test/loss"],
        "n_samples": int(support.sum()),
        "per_class_accuracy": {
            name: (100.0 * float(matrix[i, i]) / float(support[i])) if support[i] else None for i, name in enumerate(data.classes)
        },
    }
    write_json(output_dir / "eval.json", record)
    return record


def _weights_file(source: str | Path) -> Path:
    """A weights file; a fibpolicy run or checkpoint directory stands for its model weights."""
    path = Path(source)
    return resolve_checkpoint(path) / MODEL_FILE if path.is_dir() else path
