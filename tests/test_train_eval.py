"""train.py / eval.py end to end on a small store in the public PushT layout (CPU, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from fibpolicy.data import write_replay_buffer
from fibpolicy.policy.loading import load_policy
from fibpolicy.training.run import run_evaluation, run_training

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Four random-walk episodes in the public layout (the same arrays generated demos have)."""
    rng = np.random.default_rng(0)
    lengths = [30, 26, 34, 28]
    n = sum(lengths)
    data = {
        "img": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
        "state": rng.uniform(60, 450, (n, 5)).astype(np.float32),
        "action": rng.uniform(60, 450, (n, 2)).astype(np.float32),
        "keypoint": rng.uniform(60, 450, (n, 9, 2)).astype(np.float32),
        "n_contacts": np.zeros((n, 1), np.float32),
    }
    return write_replay_buffer(tmp_path_factory.mktemp("data") / "pusht.zarr", data, np.cumsum(lengths))


def _compose(config_name, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


@pytest.mark.parametrize("task, encoder", [("pusht_image", "vit_fib_tiny"), ("pusht_lowdim", "vit_fib_tiny")])
def test_smoke_run_writes_every_artifact_and_eval_rescoring_works(tmp_path, store, task, encoder):
    run_dir = tmp_path / "run"
    cfg = _compose("train", [
        f"task={task}", f"encoder={encoder}", "training=smoke", "task.demos=null",
        f"task.dataset.zarr_path={store}", f"run_dir={run_dir}", "task.evaluator.progress=false",
        "training.trainer.progress=false",
    ])
    metrics = run_training(cfg)
    assert np.isfinite(metrics["val/loss"]) and 0.0 <= metrics["test/mean_score"] <= 1.0
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tb").is_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert any("test/mean_score" in r for r in rows)
    latest = run_dir / "checkpoints" / "latest"
    assert (latest / "ema.safetensors").is_file() and list((run_dir / "checkpoints").glob("epoch*"))
    video = run_dir / "videos" / "epoch0000_train_seed0.mp4"
    assert video.is_file() and video.stat().st_size > 0

    policy = load_policy(run_dir, device="cpu")
    obs = {key: torch.rand(2, 2, *meta["shape"]) * (1 if meta["type"] == "rgb" else 400) for key, meta in cfg.task.shape_meta.obs.items()}
    action = policy.predict_action(obs, generator=0)["action"]
    assert action.shape == (2, 8, 2)
    torch.testing.assert_close(action, policy.predict_action(obs, generator=0)["action"])

    out = tmp_path / "eval"
    record = run_evaluation(_compose("eval", [f"checkpoint={latest}", "n_test=2", "n_train=0", "n_envs=2", f"output_dir={out}", "inference_steps=2"]))
    saved = json.loads((out / "eval.json").read_text())
    assert saved["n_episodes"] == 2 and saved["mean_score"] == record["mean_score"]
    assert [e["seed"] for e in saved["episodes"]] == [100000, 100001]
    assert saved["inference"]["steps"] == 2


def test_train_entry_point_runs_under_hydra(tmp_path, store):
    env = dict(os.environ, FIBPOLICY_RUNS_DIR=str(tmp_path / "runs"), FIBPOLICY_DATA_DIR=str(tmp_path / "data"))
    cmd = [
        sys.executable, str(ROOT / "train.py"), "training=smoke", "encoder=vit_fib_tiny", "task.demos=null",
        f"task.dataset.zarr_path={store}", "task.evaluator.n_test=1", "task.evaluator.n_envs=2",
        "training.trainer.max_steps=2",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert "[fibpolicy] done" in res.stdout


def test_bad_dataset_path_is_reported(tmp_path):
    cfg = _compose("train", ["training=smoke", "task.demos=null", f"task.dataset.zarr_path={tmp_path}/missing.zarr", f"run_dir={tmp_path}/run"])
    with pytest.raises(Exception, match="missing.zarr"):
        run_training(cfg)
