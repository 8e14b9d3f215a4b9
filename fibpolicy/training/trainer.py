"""One training loop for every task: diffusion policies and classifiers alike.

The model only has to provide ``compute_loss(batch) -> Tensor | dict`` (a dict carries ``"loss"``
plus any scalars to log). Everything else lives here: AdamW (or any optimiser factory), warm-up +
cosine schedule stepped per batch, gradient clipping, bf16 autocast (``precision``: ``auto`` = where the
hardware has native bf16), EMA, validation loss,
periodic task evaluation (rollouts, test accuracy) through an ``evaluator`` callback, top-k
checkpoints by a monitored score plus ``latest``, TensorBoard + ``metrics.jsonl``, tqdm, DDP under
``torchrun``, and exact resumption (model, optimiser, scheduler, EMA, sampler position, RNG states).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch
import torch.nn as nn
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..device import use_bf16
from ..checkpoint import (
    CHECKPOINTS_DIR, TopKCheckpoints, find_resumable, latest_checkpoint, load_trainer_state, load_weights, save_resumable,
)
from .distributed import DistInfo, any_rank, barrier, init_distributed, mean_across_ranks
from .logger import MetricsLogger
from .optim import adamw
from .sampler import ResumableSampler
from .seeding import rng_state, seed_everything, set_rng_state


class EMALike(Protocol):
    """What the trainer needs of an exponential moving average of the model."""

    averaged_model: nn.Module

    def step(self, model: nn.Module) -> None: ...  # noqa: D102

    def state_dict(self) -> dict[str, Any]: ...  # noqa: D102

    def load_state_dict(self, state: dict[str, Any]) -> None: ...  # noqa: D102


Evaluator = Callable[[nn.Module, int, Path], Mapping[str, Any]]


class _LossForward(nn.Module):
    # DDP synchronises gradients through forward(), so the loss must be computed inside one.
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Any:
        return self.model.compute_loss(batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a nested dict / list / tuple batch to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Samples in a (nested dict / list / tuple) batch: the leading size of its first tensor."""
    if torch.is_tensor(batch):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        size = batch_size_of(value)
        if size:
            return size
    return 0


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, Mapping):
        if "loss" not in out:
            raise ValueError(f"compute_loss returned a dict without 'loss' (keys: {sorted(out)})")
        extras = {k: float(v) for k, v in out.items() if k != "loss"}
        return out["loss"], extras
    return out, {}


class Trainer:
    """Trains ``model`` on ``train_dataset``; see the module docstring for what it takes care of."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        *,
        run_dir: str | Path,
        val_dataset: Dataset | None = None,
        optimizer: Callable[[nn.Module], torch.optim.Optimizer] = adamw,
        lr_scheduler: str = "cosine",
        lr_warmup_steps: int = 500,
        lr_warmup_epochs: float | None = None,
        num_epochs: int = 1,
        max_steps: int | None = None,
        max_minutes: float | None = None,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        grad_clip_norm: float | None = None,
        ema: Callable[[nn.Module], EMALike] | None = None,
        precision: str = "auto",
        log_every_steps: int = 10,
        val_every_epochs: int = 1,
        eval_every_epochs: int = 50,
        checkpoint_every_epochs: int = 50,
        checkpoint_every_steps: int | None = None,
        topk: int = 5,
        monitor: str = "test/mean_score",
        evaluator: Evaluator | None = None,
        seed: int = 42,
        run_config: DictConfig | dict | None = None,
        device: str | None = None,
        collate_fn: Callable | None = None,
        progress: bool = True,
    ) -> None:
        if not hasattr(model, "compute_loss"):
            raise TypeError(f"{type(model).__name__} has no compute_loss(batch); the trainer needs one")
        if len(train_dataset) == 0:
            raise ValueError("the training dataset is empty")
        if num_epochs < 1 or batch_size < 1:
            raise ValueError(f"num_epochs and batch_size must be >= 1, got {num_epochs} and {batch_size}")
        if max_minutes is not None and not max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 (or null for no time budget), got {max_minutes}")
        self.dist: DistInfo = init_distributed(device)
        self.device = self.dist.device
        self.model = model.to(self.device)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.run_dir = Path(run_dir)
        self.num_epochs, self.max_steps, self.batch_size = num_epochs, max_steps, batch_size
        self.max_minutes = max_minutes
        self._out_of_time = False
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.grad_clip_norm, self.collate_fn = num_workers, grad_clip_norm, collate_fn
        self.precision = precision
        self.use_bf16 = use_bf16(precision, self.device)
        self.log_every_steps, self.val_every_epochs = log_every_steps, val_every_epochs
        self.eval_every_epochs, self.checkpoint_every_epochs = eval_every_epochs, checkpoint_every_epochs
        self.checkpoint_every_steps, self.monitor, self.evaluator = checkpoint_every_steps, monitor, evaluator
        self.seed, self.run_config, self.progress = seed, run_config, progress and self.dist.is_main

        seed_everything(seed + self.dist.rank)
        self.optimizer = optimizer(self.model)
        self.sampler = ResumableSampler(
            len(train_dataset), shuffle=True, seed=seed, rank=self.dist.rank, world_size=self.dist.world_size
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / batch_size)
        total = self.steps_per_epoch * num_epochs if max_steps is None else min(max_steps, self.steps_per_epoch * num_epochs)
        self.total_steps = total
        # Classification recipes state warm-up in epochs, policy recipes in steps.
        warmup = round(lr_warmup_epochs * self.steps_per_epoch) if lr_warmup_epochs is not None else lr_warmup_steps
        self.lr_scheduler = get_scheduler(lr_scheduler, self.optimizer, num_warmup_steps=warmup, num_training_steps=total)
        self.ema = ema(self.model) if ema is not None else None
        self.forward = _LossForward(self.model)
        if self.dist.distributed:
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.topk = TopKCheckpoints(self.run_dir / CHECKPOINTS_DIR, k=topk)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best: dict[str, float] = {}
        # Wall-clock seconds the run has trained (evaluations included), summed over resumed sessions.
        self.elapsed_s = 0.0
        self._clock_start: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def eval_model(self) -> nn.Module:
        """The weights used for validation, evaluation and checkpoints' ``ema.safetensors``."""
        return self.ema.averaged_model if self.ema is not None else self.model

    @property
    def latest_path(self) -> Path:
        """Directory of the ``latest`` checkpoint."""
        return latest_checkpoint(self.run_dir)

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the weights that a resumed run needs to continue exactly."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": dict(self.best),
            "elapsed_s": self.wall_time_s,
            "rng": rng_state(),
        }

    @property
    def wall_time_s(self) -> float:
        """Seconds this run has trained so far, across every resumed session."""
        if self._clock_start is None:
            return self.elapsed_s
        return self.elapsed_s + time.time() - self._clock_start

    def _meta(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def save_latest(self) -> None:
        """Write the resumable checkpoint and point ``checkpoints/latest`` at it (main rank only)."""
        if self.dist.is_main:
            save_resumable(
                self.run_dir, self.step, model=self.model,
                ema_model=self.ema.averaged_model if self.ema is not None else None,
                trainer_state=self.state_dict(), config=self.run_config, meta=self._meta(),
            )
        barrier(self.dist)

    def _save_topk(self, score: float) -> None:
        # Top-k checkpoints are for evaluation: the evaluation weights only, no trainer state.
        weights = {"ema_model": self.ema.averaged_model} if self.ema is not None else {"model": self.model}
        self.topk.save(score, self.epoch, **weights, config=self.run_config, meta=self._meta())

    def resume(self, checkpoint: str | Path | None = None) -> None:
        """Restore weights, EMA, optimiser, scheduler, counters and RNG states from a checkpoint.

        Without ``checkpoint``: the newest complete resumable checkpoint of the run directory.
        """
        if checkpoint is None:
            found, refused = find_resumable(self.run_dir)
            if found is None:
                raise FileNotFoundError(
                    f"resume=true but {self.run_dir / CHECKPOINTS_DIR} holds no complete checkpoint"
                    + (f" ({'; '.join(refused)})" if refused else "")
                )
            for reason in refused:
                print(f"[fibpolicy] warning: skipped {reason}", flush=True)
            path = found
        else:
            path = Path(checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"resume=true but there is no checkpoint at {path}")
        state = load_trainer_state(path)
        load_weights(self.model, path)
        if self.ema is not None:
            load_weights(self.ema.averaged_model, path, ema=True)
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best = dict(state["best"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))  # absent in checkpoints written before it existed
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ loop

    def _loader(self, dataset: Dataset, sampler, batch_size: int, epoch: int) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda", collate_fn=self.collate_fn,
            # Seeded per epoch so worker seeds never draw from (and perturb) the global RNG.
            generator=torch.Generator().manual_seed(self.seed + 7919 * epoch),
            persistent_workers=False,
        )

    def _train_step(self, batch: Any) -> tuple[float, dict[str, float]]:
        batch = to_device(batch, self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss, extras = _split_loss(self.forward(batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip_norm is not None:
            extras["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.step(self.model)
        return loss.item(), extras

    @contextmanager
    def _evaluating(self) -> Iterator[nn.Module]:
        """The evaluation weights in eval mode, under a forked RNG so the training stream is untouched."""
        model = self.eval_model
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                yield model
        finally:
            model.train(was_training)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Per-sample mean loss of the evaluation weights on the validation set, fixed noise across epochs."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return {}
        total, count = 0.0, 0
        with self._evaluating() as model:
            torch.manual_seed(self.seed + 1)  # the same noise every epoch: comparable numbers
            for batch in self._loader(self.val_dataset, None, self.val_batch_size, 0):
                batch = to_device(batch, self.device)
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                    loss, _ = _split_loss(model.compute_loss(batch))
                n = batch_size_of(batch)
                total, count = total + loss.item() * n, count + n
        return {"val/loss": mean_across_ranks(total / max(count, 1), self.dist)}

    def evaluate(self) -> dict[str, Any]:
        """Run the task's evaluator (rollouts, test accuracy) on the evaluation weights (main rank)."""
        if self.evaluator is None or not self.dist.is_main:
            return {}
        with self._evaluating() as model:
            return dict(self.evaluator(model, self.epoch, self.run_dir))

    def _finished(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        if self.max_minutes is not None and not self._out_of_time:
            # A wall-clock budget (evaluations included, summed over resumed sessions); the ranks agree.
            self._out_of_time = any_rank(self.wall_time_s >= 60.0 * self.max_minutes, self.dist)
        return self._out_of_time

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``num_epochs`` (or ``max_steps``); returns the last epoch's metrics."""
        if resume:
            self.resume()
            if self.epoch >= self.num_epochs or self._finished():
                if self.dist.is_main:
                    budget = " or training.trainer.max_minutes" if self.max_minutes is not None else ""
                    print(f"[fibpolicy] the run in {self.run_dir} is already finished (step {self.step}, epoch "
                          f"{self.epoch} of {self.num_epochs}, {self.wall_time_s / 60:.1f} min); nothing to train. "
                          f"Raise training.trainer.num_epochs{budget} to continue it.", flush=True)
                return {"epoch": self.epoch, "step": self.step, "already_finished": True}
        # On resume, rows a killed run logged after its last checkpoint are dropped (they are logged again).
        logger = MetricsLogger(self.run_dir, resume_step=self.step if resume else None) if self.dist.is_main else None
        self.model.train()
        last: dict[str, Any] = {}
        window: list[float] = []
        self._clock_start = time.time()
        # One bar for the whole run: its total is the number of steps the run will take.
        bar = tqdm(total=self.total_steps, initial=min(self.step, self.total_steps), disable=not self.progress,
                   unit="step", dynamic_ncols=True)
        try:
            while self.epoch < self.num_epochs and not self._finished():
                self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.batch_size)
                loader = self._loader(self.train_dataset, self.sampler, self.batch_size, self.epoch)
                bar.set_description(f"epoch {self.epoch}")
                for batch in loader:
                    loss, extras = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    bar.update(1)
                    window.append(loss)
                    if logger is not None and self.step % self.log_every_steps == 0:
                        logger.log({"train/loss": sum(window) / len(window), "train/lr": self.lr_scheduler.get_last_lr()[0],
                                    "epoch": self.epoch, **{f"train/{k}": v for k, v in extras.items()}}, self.step)
                        bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                        window.clear()
                    if self.checkpoint_every_steps and self.step % self.checkpoint_every_steps == 0:
                        self.save_latest()
                    if self._finished():
                        break
                epoch_done = self.batch_in_epoch >= self.steps_per_epoch
                if epoch_done:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                last = self._end_of_epoch(logger, final=self.epoch >= self.num_epochs or self._finished())
        finally:
            self.elapsed_s, self._clock_start = self.wall_time_s, None
            bar.close()
            if logger is not None:
                logger.close()
            close = getattr(self.evaluator, "close", None)
            if close is not None:  # e.g. env workers an evaluator keeps between evaluations
                close()
        return last

    def _end_of_epoch(self, logger: MetricsLogger | None, *, final: bool) -> dict[str, Any]:
        metrics: dict[str, Any] = {"epoch": self.epoch, "wall_time_s": self.wall_time_s}
        if final or self.epoch % self.val_every_epochs == 0:
            metrics.update(self.validate())
        if final or self.epoch % self.eval_every_epochs == 0:
            evaluated = self.evaluate()
            if evaluated and self.monitor not in evaluated and self.topk.k > 0:
                # A typo here would silently turn top-k checkpointing off for the whole run.
                raise ValueError(
                    f"training.trainer.monitor={self.monitor!r} is not a metric of this task's evaluator; "
                    f"valid keys: {sorted(k for k, v in evaluated.items() if isinstance(v, (int, float)))}"
                )
            metrics.update(evaluated)
        score = metrics.get(self.monitor)
        if score is not None and not math.isfinite(score):
            # An evaluation whose episodes all failed: no score to rank a checkpoint by.
            print(f"[fibpolicy] warning: {self.monitor} is {score} at epoch {self.epoch}; no top-k checkpoint kept", flush=True)
            score = None
        if score is not None:
            self.best[self.monitor] = max(score, self.best.get(self.monitor, float("-inf")))
            metrics[f"best/{self.monitor}"] = self.best[self.monitor]
        if logger is not None:
            logger.log(metrics, self.step)
        if score is not None and self.dist.is_main:
            self._save_topk(float(score))
        if final or self.epoch % self.checkpoint_every_epochs == 0:
            self.save_latest()
        return metrics
