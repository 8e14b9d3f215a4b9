"""train.py / eval.py end to end for classification tasks: digits, moving shapes, a video list (CPU, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import load_file

from fibpolicy.checkpoint import checkpoint_task_kind, load_config, load_weights
from fibpolicy.data import write_moving_shapes
from fibpolicy.training.classification_task import build_classifier, build_datasets
from fibpolicy.training.classifier import ClassificationEvaluator
from fibpolicy.evaluation import run_evaluation
from fibpolicy.training.run import run_training

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(config_name, overrides):
    with initialize_config_dir(config_dir=str(ROOT / "config"), version_base=None):
        return compose(config_name=config_name, overrides=overrides)


def _train(tmp_path, task, *extra):
    run_dir = tmp_path / "run"
    cfg = _compose("train", [
        f"task={task}", "training=classification_smoke", f"run_dir={run_dir}",
        "training.trainer.progress=false", "++task.backbone.depth=2", *extra,
    ])
    return run_dir, run_training(cfg)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_digits_smoke_run_then_eval_py_rescoring(tmp_path):
    run_dir, metrics = _train(tmp_path, "digits")
    assert metrics["test/top1"] <= metrics["test/top5"] and np.isfinite(metrics["test/loss"])
    rows = _rows(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["test/top1"] for r in rows if "test/top1" in r] == [metrics["test/top1"]]
    assert (run_dir / "tb").is_dir() and (run_dir / "confusion_matrix.png").is_file()
    assert len((run_dir / "confusion_matrix.csv").read_text().splitlines()) == 11
    saved = load_config(run_dir / "checkpoints" / "latest")
    assert "policy" not in saved and saved.task.kind == "classification" and saved.task.backbone.patch_size == 4
    assert len(list((run_dir / "checkpoints").glob("epoch*"))) == 1
    assert checkpoint_task_kind(run_dir) == "classification"

    # eval.py, as a user runs it, on the run directory: the same test split, the same score.
    out = tmp_path / "eval"
    env = dict(os.environ, FIBPOLICY_RUNS_DIR=str(tmp_path / "runs"), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"checkpoint={run_dir}", f"output_dir={out}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((out / "eval.json").read_text())
    assert record["top1"] == pytest.approx(metrics["test/top1"]) and record["n_samples"] == 32
    assert (out / "confusion_matrix.png").is_file() and "top1=" in res.stdout


def test_bf16_run_is_rescored_at_its_own_precision(tmp_path, monkeypatch):
    from fibpolicy import device as device_module

    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)  # any CPU can run bf16 autocast
    run_dir, metrics = _train(tmp_path, "digits", "training.trainer.precision=bf16")
    assert load_config(run_dir / "checkpoints" / "latest").training.trainer.precision == "bf16"
    record = run_evaluation(_compose("eval", [f"checkpoint={run_dir}", f"output_dir={tmp_path / 'eval'}"]))
    # Same weights, data and precision: the same loss to the last bit (fp32 scoring would differ).
    assert record["loss"] == metrics["test/loss"] and record["top1"] == metrics["test/top1"]
    cfg = load_config(run_dir)
    fp32 = ClassificationEvaluator(build_datasets(cfg, train=False).test, batch_size=cfg.training.eval_batch_size, precision="fp32")
    model = build_classifier(cfg, [str(d) for d in range(10)])
    load_weights(model, run_dir / "checkpoints" / "latest")
    assert fp32(model.eval())["test/loss"] != record["loss"]


def test_moving_shapes_smoke_run_and_evaluation(tmp_path):
    run_dir, metrics = _train(tmp_path, "video_moving_shapes", "task.train_dataset.num_videos=64", "task.test_dataset.num_videos=32")
    saved = load_config(run_dir / "checkpoints" / "latest")
    assert saved.task.input == "video" and saved.encoder.model_name == "vit_fib_tiny_patch16_224"
    record = run_evaluation(_compose("eval", [f"checkpoint={run_dir / 'checkpoints' / 'latest'}", f"output_dir={tmp_path / 'eval'}"]))
    assert record["top1"] == pytest.approx(metrics["test/top1"]) and len(record["per_class_accuracy"]) == 8
    # Trained from scratch, the temporal embedding starts at the task's scale (0.5), not the pos_embed's 0.02.
    time_embed = load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))["backbone.time_embed"]
    assert saved.task.backbone.time_embed_std == 0.5 and 0.4 < float(time_embed.std()) < 0.6


def test_video_list_task_on_mp4_files_with_a_corrupt_one(tmp_path):
    data = tmp_path / "videos"
    write_moving_shapes(data, 8, split="train", num_frames=6, image_size=32)
    test_list = write_moving_shapes(data, 4, split="test", num_frames=6, image_size=32)
    (data / "train" / "broken.mp4").write_bytes(b"\x00" * 500)
    with (data / "train.txt").open("a") as f:
        f.write("train/broken.mp4 3\n")
    with pytest.warns(UserWarning) as caught:
        run_dir, metrics = _train(
            tmp_path, "video_list", f"task.train_list={data / 'train.txt'}", f"task.test_list={test_list}",
            f"task.classes_file={data / 'classes.txt'}", "task.image_size=32", "task.backbone.patch_size=8",
            "task.num_frames=4", "task.sampling_rate=1", "task.transform.jitter_scale=[32,36]", "task.test_clips=2",
        )
    messages = [str(w.message) for w in caught]
    assert any("broken.mp4" in m for m in messages) and any("skipped 1 of 9" in m for m in messages)
    record = run_evaluation(_compose("eval", [f"checkpoint={run_dir}", f"output_dir={tmp_path / 'eval'}", "num_clips=1"]))
    assert record["n_samples"] == 4 and set(record["per_class_accuracy"]) == set((data / "classes.txt").read_text().split())


def test_classification_needs_a_classification_recipe_and_a_vit(tmp_path):
    cfg = _compose("train", ["task=digits", "training=default", f"run_dir={tmp_path}/run"])
    with pytest.raises(ValueError, match="training=classification"):
        run_training(cfg)
    with pytest.raises(ValueError, match="resnet18_gn"):
        _train(tmp_path, "digits", "encoder=resnet18_gn")


def test_imagefolder_task_reads_a_class_tree(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("ant", "bee", "cat"):
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "tree" / split / c / f"{i}.jpg")
    run_dir, metrics = _train(tmp_path, "imagefolder", f"task.root={tmp_path / 'tree'}", "task.image_size=32")
    assert (run_dir / "confusion_matrix.csv").read_text().splitlines()[0] == "true\\predicted,ant,bee,cat"
