"""The classification parts the shared trainer plugs in: model wrapper with ``compute_loss``, the
layer-decayed AdamW factory, and the per-epoch top-1 / top-5 evaluator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..device import use_bf16

__all__ = ["ClassificationEvaluator", "Classifier", "classification_optimizer", "topk_correct"]


class Classifier(nn.Module):
    """A timm classifier backbone plus its training loss (label smoothing, optional mixup / cutmix).

    ``input_key`` names the batch entry holding the inputs (``"image"`` or ``"video"``). An input with one
    more leading dimension than ``input_ndim`` is several views of each sample (test-time clips): their
    softmax scores are averaged, and ``forward`` returns the log of that average as logits.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        input_key: str = "image",
        input_ndim: int = 4,
        label_smoothing: float = 0.0,
        mixup: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes, self.input_key, self.input_ndim = int(num_classes), input_key, int(input_ndim)
        self.label_smoothing = float(label_smoothing)
        mixup = dict(mixup or {})
        active = mixup.get("mixup_alpha", 0.0) > 0 or mixup.get("cutmix_alpha", 0.0) > 0 or mixup.get("cutmix_minmax") is not None
        self.mixup = Mixup(**mixup, label_smoothing=self.label_smoothing, num_classes=self.num_classes) if active else None
        self._soft_ce = SoftTargetCrossEntropy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes); multi-view inputs (B, K, ...) average the K views' probabilities."""
        if x.dim() == self.input_ndim + 1:
            b, k = x.shape[:2]
            logits = self.backbone(x.flatten(0, 1)).view(b, k, -1)
            return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=1) - math.log(k)
        if x.dim() != self.input_ndim:
            raise ValueError(f"batch[{self.input_key!r}] has shape {tuple(x.shape)}, expected {self.input_ndim} dims (or one more for views)")
        return self.backbone(x)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training: smoothed (or mixed) cross-entropy; eval mode: plain cross-entropy. Also batch accuracy."""
        x, y = batch[self.input_key], batch["label"]
        # timm's Mixup pairs each sample with its mirror in the batch, so it needs an even batch size;
        # an odd last batch is trained without mixing rather than dropped.
        if self.training and self.mixup is not None and len(x) % 2 == 0:
            x, soft = self.mixup(x, y)
            logits = self(x)
            loss = self._soft_ce(logits.float(), soft)
        else:
            logits = self(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing if self.training else 0.0)
        acc = (logits.detach().argmax(-1) == y).float().mean()
        return {"loss": loss, "acc": acc}


def classification_optimizer(
    model: nn.Module,
    *,
    opt: str = "adamw",
    lr: float | None = None,
    base_lr: float = 1e-3,
    batch_size: int = 256,
    weight_decay: float = 0.05,
    layer_decay: float | None = 0.75,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` with layer decay over the classifier's backbone.

    ``lr`` defaults to ``base_lr * batch_size / 256`` (the release's linear scaling rule). No weight decay on
    biases, norms, position embeddings and the class token. Layer-decay scales are folded into each
    group's ``lr`` here because the shared trainer steps a plain PyTorch LR schedule, which (unlike timm's
    schedulers) knows nothing of timm's ``lr_scale`` group entry.
    """
    backbone = getattr(model, "backbone", model)
    owned = {id(p) for p in backbone.parameters()}
    stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in owned]
    if stray:
        raise ValueError(f"parameters outside the backbone would not be optimised: {stray[:5]}")
    lr = float(lr) if lr is not None else base_lr * batch_size / 256
    kwargs: dict[str, Any] = {"betas": tuple(betas), "eps": eps} if opt.lower().endswith("adamw") or opt.lower() == "adam" else {}
    optimizer = create_optimizer_v2(backbone, opt=opt, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay, **kwargs)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    # Largest lr first: the trainer logs the first group's lr as train/lr, which should be the peak lr
    # (the head's), not the most-decayed patch embedding's. Group order means nothing to the optimiser.
    optimizer.param_groups.sort(key=lambda g: -g["lr"])
    return optimizer


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[int, int]:
    """Number of samples whose label is among the top-k logits, for each k (capped at the class count)."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices
    hit = top == labels[:, None]
    return {k: int(hit[:, : min(k, kmax)].any(dim=-1).sum()) for k in ks}


class ClassificationEvaluator:
    """Scores a classifier on the held-out split: ``test/top1``, ``test/top5`` (percent), ``test/loss``.

    Called by the trainer after each evaluation epoch. The last call's labels and predictions stay in
    ``last_targets`` / ``last_predictions`` for the confusion matrix written at the end of training.
    ``precision`` takes the trainer's values (``auto`` | ``bf16`` | ``fp32``): scores are computed at the
    precision the model trained in.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        prefix: str = "test",
        progress: bool = False,
        precision: str = "auto",
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("the evaluation dataset is empty")
        self.dataset, self.batch_size, self.num_workers = dataset, int(batch_size), int(num_workers)
        self.prefix, self.progress, self.precision = prefix, progress, precision
        self.last_targets: np.ndarray | None = None
        self.last_predictions: np.ndarray | None = None

    @torch.no_grad()
    def __call__(self, model: nn.Module, epoch: int = 0, run_dir: str | Path | None = None) -> dict[str, float]:
        """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` (put in eval mode by the caller)."""
        device = next(model.parameters()).device
        bf16 = use_bf16(self.precision, device)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=device.type == "cuda")
        total, loss_sum, correct = 0, 0.0, {1: 0, 5: 0}
        targets, predictions = [], []
        for batch in tqdm(loader, desc=f"{self.prefix} epoch {epoch}", leave=False, disable=not self.progress):
            x = batch[model.input_key].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            for k, n in topk_correct(logits, y, (1, 5)).items():
                correct[k] += n
            total += len(y)
            targets.append(y.cpu().numpy())
            predictions.append(logits.argmax(-1).cpu().numpy())
        self.last_targets, self.last_predictions = np.concatenate(targets), np.concatenate(predictions)
        return {
            f"{self.prefix}/top1": 100.0 * correct[1] / total,
            f"{self.prefix}/top5": 100.0 * correct[5] / total,
            f"{self.prefix}/loss": loss_sum / total,
        }
