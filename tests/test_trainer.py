"""The shared trainer: checkpoints, exact resume, top-k, logging, DDP on CPU with gloo."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.utils.data import Dataset

from fibpolicy.training import Trainer, load_trainer_state, load_weights
from fibpolicy.training import EMAModel


class PairDataset(Dataset):
    def __init__(self, n=40, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


class Crash(RuntimeError):
    pass


class NoisyRegressor(nn.Module):
    """A loss that draws from the global RNG, like diffusion noise and random crops do."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.calls, self.crash_at = 0, None

    def compute_loss(self, batch):
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise Crash("simulated kill")
        noise = 0.01 * torch.randn_like(batch["x"])
        pred = self.net(batch["x"] + noise).squeeze(-1)
        return {"loss": ((pred - batch["y"]) ** 2).mean(), "noise_mean": noise.mean()}


def _trainer(tmp_path, model, **kw):
    options = dict(
        run_dir=tmp_path, val_dataset=PairDataset(12, seed=1), num_epochs=4, batch_size=8, lr_warmup_steps=3,
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), log_every_steps=2,
        eval_every_epochs=1, checkpoint_every_epochs=2, seed=3, progress=False, topk=2,
        ema=lambda m: EMAModel(m, power=0.75),
        evaluator=lambda model, epoch, run_dir: {"test/mean_score": float(-epoch % 3)},
    )
    options.update(kw)
    return Trainer(model, PairDataset(), **options)


def _fresh_model():
    torch.manual_seed(0)
    return NoisyRegressor()


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "full", _fresh_model(), checkpoint_every_steps=7)
    full.fit()
    reference = {k: v.clone() for k, v in full.model.state_dict().items()}
    reference_ema = {k: v.clone() for k, v in full.ema.averaged_model.state_dict().items()}

    model = _fresh_model()
    model.crash_at = 9  # training call 9: after the mid-epoch step-7 checkpoint, before the step-10 one
    with pytest.raises(Crash):
        _trainer(tmp_path / "cut", model, checkpoint_every_steps=7).fit()
    state = load_trainer_state(tmp_path / "cut" / "checkpoints" / "latest")
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (7, 1, 2)

    resumed = _trainer(tmp_path / "cut", _fresh_model(), checkpoint_every_steps=7)
    resumed.fit(resume=True)
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, reference[k]), k
    for k, v in resumed.ema.averaged_model.state_dict().items():
        assert torch.equal(v, reference_ema[k]), k
    steps = [row["step"] for row in map(json.loads, (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) if "train/loss" in row]
    assert steps == sorted(set(steps)), "steps logged before the kill and after resume must not repeat"


def test_checkpoints_metrics_and_topk(tmp_path):
    trainer = _trainer(tmp_path, _fresh_model())
    final = trainer.fit()
    assert trainer.step == 4 * 5 and final["epoch"] == 4
    ckpts = tmp_path / "checkpoints"
    latest = ckpts / "latest"
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "ema.safetensors", "trainer_state.pt", "meta.json"}
    assert not list(ckpts.glob(".*")), "no temporary directories left behind"
    kept = sorted(p.name for p in ckpts.glob("epoch*"))
    assert kept == ["epoch0001-score2.000", "epoch0004-score2.000"]  # epochs 1-4 score 2, 1, 0, 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r and "train/lr" in r and "train/noise_mean" in r for r in rows)
    epoch_rows = [r for r in rows if "val/loss" in r]
    assert len(epoch_rows) == 4 and epoch_rows[-1]["val/loss"] < epoch_rows[0]["val/loss"]
    model = NoisyRegressor()
    load_weights(model, latest, ema=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trainer.ema.averaged_model.state_dict().values()))
    assert (tmp_path / "tb").is_dir()


def test_a_time_budget_ends_the_run_with_a_final_evaluation_and_wall_time_sums_over_resumes(tmp_path, monkeypatch):
    import fibpolicy.training.trainer as trainer_module

    clock = {"now": 1000.0}
    monkeypatch.setattr(trainer_module.time, "time", lambda: clock["now"])

    class SlowRegressor(NoisyRegressor):
        def compute_loss(self, batch):
            if self.training:  # every training step takes 10 s of wall-clock (validation none)
                clock["now"] += 10.0
            return super().compute_loss(batch)

    def make():
        torch.manual_seed(0)
        return SlowRegressor()

    # 5 steps an epoch, 10 s a step: a 1.5-minute budget ends the run at step 9, mid-epoch 1.
    trainer = _trainer(tmp_path, make(), num_epochs=10, max_minutes=1.5, checkpoint_every_epochs=1)
    final = trainer.fit()
    assert trainer.step == 9 and "test/mean_score" in final and "val/loss" in final
    assert final["wall_time_s"] == pytest.approx(90.0)
    assert load_trainer_state(tmp_path / "checkpoints" / "latest")["step"] == 9

    clock["now"] += 3600.0  # time between sessions does not count
    again = _trainer(tmp_path, make(), num_epochs=10, max_minutes=1.5, checkpoint_every_epochs=1)
    assert again.fit(resume=True)["already_finished"]
    longer = _trainer(tmp_path, make(), num_epochs=10, max_minutes=2.0, checkpoint_every_epochs=1)
    final = longer.fit(resume=True)
    assert longer.step == 12 and final["wall_time_s"] == pytest.approx(120.0)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    walls = [r["wall_time_s"] for r in rows if "wall_time_s" in r]
    assert walls == sorted(walls) and walls[-1] == pytest.approx(120.0)
    with pytest.raises(ValueError, match="max_minutes"):
        _trainer(tmp_path / "bad", make(), max_minutes=0)


def test_an_evaluation_without_a_score_keeps_no_topk_checkpoint(tmp_path, capsys):
    scores = iter([1.0, float("nan"), 0.5, float("nan")])
    trainer = _trainer(tmp_path, _fresh_model(), evaluator=lambda model, epoch, run_dir: {"test/mean_score": next(scores)})
    trainer.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch*")) == ["epoch0001-score1.000", "epoch0003-score0.500"]
    assert "test/mean_score is nan at epoch 2; no top-k checkpoint kept" in capsys.readouterr().out
    assert trainer.best["test/mean_score"] == 1.0


def test_trainer_rejects_bad_setups(tmp_path):
    with pytest.raises(TypeError, match="compute_loss"):
        Trainer(nn.Linear(2, 2), PairDataset(), run_dir=tmp_path)
    with pytest.raises(ValueError, match="empty"):
        Trainer(NoisyRegressor(), PairDataset(0), run_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _trainer(tmp_path / "none", _fresh_model()).fit(resume=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = _trainer(out_dir, _fresh_model(), num_epochs=2, evaluator=None, device="cpu")
    trainer.fit()
    torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_on_cpu_keep_weights_in_sync(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = _fresh_model().state_dict()
    assert not all(torch.equal(a[k], init[k]) for k in a), "training must have changed the weights"
    assert (tmp_path / "checkpoints" / "latest").is_dir()


class NestedConstant(nn.Module):
    """Loss = mean of the batch's targets, batches nested like a policy's {"obs": {...}, "action": ...}."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def compute_loss(self, batch):
        return batch["action"].mean() + 0.0 * self.bias


class NestedDataset(Dataset):
    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        return {"obs": {"a": torch.zeros(3), "b": torch.zeros(2)}, "action": self.values[i]}


def test_validation_loss_weights_every_sample_equally_with_nested_batches(tmp_path):
    # Batches of 8 and 4 samples: the per-sample mean differs from the mean of the two batch means.
    values = [0.0] * 8 + [12.0] * 4
    trainer = Trainer(
        NestedConstant(), NestedDataset([1.0] * 8), run_dir=tmp_path, val_dataset=NestedDataset(values),
        batch_size=8, lr_warmup_steps=0, progress=False,
    )
    assert trainer.validate()["val/loss"] == pytest.approx(sum(values) / len(values))  # 4.0, not 6.0


class PrecisionProbe(nn.Module):
    """Records whether each loss ran under CPU bf16 autocast (and in which dtype a Linear computed)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.seen = []

    def compute_loss(self, batch):
        pred = self.net(batch["x"]).squeeze(-1)
        self.seen.append(("train" if self.training else "eval", pred.dtype))
        return ((pred.float() - batch["y"]) ** 2).mean()


def test_precision_auto_follows_the_hardware_and_bf16_fp32_force(tmp_path, monkeypatch):
    from fibpolicy import device as device_module
    from fibpolicy.device import use_bf16

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="'fp16'"):
        use_bf16("fp16", cpu)
    assert use_bf16("fp32", cpu) is False

    # A CPU with native bf16 (forced, so the test runs on any CPU): auto trains and validates in bf16.
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert use_bf16("auto", cpu) is True
    torch.manual_seed(0)
    model = PrecisionProbe()
    Trainer(model, PairDataset(16), run_dir=tmp_path / "auto", val_dataset=PairDataset(8, seed=1), num_epochs=1,
            batch_size=8, precision="auto", progress=False, checkpoint_every_epochs=1).fit()
    assert model.seen == [("train", torch.bfloat16)] * 2 + [("eval", torch.bfloat16)]

    torch.manual_seed(0)
    model = PrecisionProbe()
    Trainer(model, PairDataset(16), run_dir=tmp_path / "fp32", val_dataset=PairDataset(8, seed=1), num_epochs=1,
            batch_size=8, precision="fp32", progress=False, checkpoint_every_epochs=1).fit()
    assert {dtype for _, dtype in model.seen} == {torch.float32}

    # Without native bf16, auto stays in fp32 (emulated bf16 is slower); bf16 forces it, with a warning.
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    assert use_bf16("auto", cpu) is False
    with pytest.warns(RuntimeWarning, match="without native bf16"):
        assert use_bf16("bf16", cpu) is True