"""Runs never lose or silently corrupt work: run directories, resume, checkpoints, stores, errors (one test per fault)."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose
from fibpolicy.atomic import clean_orphans
from fibpolicy.checkpoint import (
    CheckpointError, find_resumable, load_trainer_state, load_weights, read_meta, save_checkpoint, save_resumable,
)
from fibpolicy.data import ReplayBuffer, ReplayBufferError, ensure_demos, record_demos, write_replay_buffer
from fibpolicy.data.integrity import StoreIntegrityError
from fibpolicy.evaluation import run_evaluation
from fibpolicy.training.run import run_training
from fibpolicy.training.run_dir import RunDirectoryError, continuation_overrides, run_directory

from test_trainer import Crash, NoisyRegressor, _trainer

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["task=pusht_lowdim", "training=smoke", "training.trainer.progress=false", "task.evaluator.progress=false",
         "+task.prepare.progress=false", "task.evaluator.n_train=0", "task.evaluator.n_test=1", "task.evaluator.n_envs=1",
         "task.evaluator.max_steps=8", "task.prepare.source.episodes=2", "task.prepare.source.workers=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _cfg(data_dir, run_dir, *extra):
    return compose("train", [*SMOKE, f"data_dir={data_dir}", f"run_dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "a"
    run_training(_cfg(data_dir, run_dir))
    return run_dir


def _snapshot(run_dir: Path) -> dict:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "tb" not in p.parts}


# ---------------------------------------------------------------- 1. a run directory belongs to one run

def test_a_second_run_on_a_run_directory_is_refused_and_changes_nothing(data_dir, finished_run):
    before = _snapshot(finished_run)
    with pytest.raises(RunDirectoryError, match="already holds a run .*resume=true.*overwrite=true"):
        run_training(_cfg(data_dir, finished_run, "seed=1"))
    assert _snapshot(finished_run) == before


def test_overwrite_replaces_the_previous_run(data_dir, tmp_path):
    run_dir = tmp_path / "r"
    run_training(_cfg(data_dir, run_dir))
    (run_dir / "notes.txt").write_text("mine")
    run_training(_cfg(data_dir, run_dir, "seed=1", "overwrite=true"))
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    assert len([1 for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]) == 4
    assert "seed: 1" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "notes.txt").read_text() == "mine"  # only what a run writes is removed


def test_two_processes_cannot_share_a_run_directory(data_dir, tmp_path):
    cfg = _cfg(data_dir, tmp_path / "busy")
    with run_directory(cfg):
        with pytest.raises(RunDirectoryError, match=f"in use by another process \\(pid {os.getpid()}\\)"):
            with run_directory(cfg):
                pass


def test_a_failed_command_leaves_no_directory_behind(data_dir, tmp_path):
    run_dir = tmp_path / "failed"
    with pytest.raises(Exception, match="missing.zarr does not exist"):  # hydra wraps it in an InstantiationException
        run_training(_cfg(data_dir, run_dir, f"task.dataset.zarr_path={tmp_path / 'missing.zarr'}", "task.prepare=null"))
    assert not run_dir.exists()


# ---------------------------------------------------------------- 2. resume compares configs before writing

@pytest.mark.parametrize("change, key", [
    ("training.trainer.batch_size=2", "training.trainer.batch_size"),
    ("policy.down_dims=[16,32,64]", "policy.down_dims"),
    ("seed=7", "seed"),
])
def test_resume_refuses_a_changed_config_naming_the_keys_and_writes_nothing(data_dir, finished_run, change, key):
    before = _snapshot(finished_run)
    with pytest.raises(RunDirectoryError, match=f"differs .*{key.replace('.', '[.]')}"):
        run_training(_cfg(data_dir, finished_run, "resume=true", change))
    assert _snapshot(finished_run) == before


def test_resume_allows_the_documented_safe_changes(data_dir, finished_run, capsys):
    metrics = run_training(_cfg(data_dir, finished_run, "resume=true", "training.trainer.log_every_steps=2"))
    assert metrics["already_finished"]
    assert "already finished" in capsys.readouterr().out


# ---------------------------------------------------------------- 3. the newest complete checkpoint, latest never missing

def _module(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def test_resume_finds_the_newest_complete_checkpoint(tmp_path):
    for step in (10, 20):
        save_checkpoint(tmp_path / "checkpoints" / f"state-{step:08d}", model=_module(step), trainer_state={"step": step},
                        meta={"step": step})
    (tmp_path / "checkpoints" / "latest").symlink_to("state-00000010")  # killed before latest was re-pointed
    found, _ = find_resumable(tmp_path)
    assert found.name == "state-00000020"
    model_file = found / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-8])  # truncated afterwards
    found, refused = find_resumable(tmp_path)
    assert found.name == "state-00000010" and "model.safetensors" in refused[0] and "truncated" in refused[0]


def test_replacing_latest_never_leaves_zero_valid_checkpoints(tmp_path, monkeypatch):
    save_resumable(tmp_path, 1, model=_module(1), trainer_state={"step": 1}, meta={"step": 1})
    latest = tmp_path / "checkpoints" / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "state-00000001"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between writing the checkpoint and pointing latest at it")

    monkeypatch.setattr("fibpolicy.checkpoint.point_link", killed)
    with pytest.raises(KeyboardInterrupt):
        save_resumable(tmp_path, 2, model=_module(2), trainer_state={"step": 2}, meta={"step": 2})
    assert read_meta(latest)["step"] == 1  # the old latest is intact
    assert find_resumable(tmp_path)[0].name == "state-00000002"  # and resume takes the newer complete one


def test_a_rerun_resumes_a_checkpoint_and_restarts_a_run_killed_before_its_first(tmp_path, capsys):
    run = tmp_path / "arm"
    assert continuation_overrides(run) == []  # nothing there yet
    run.mkdir()
    (run / ".lock").write_text("123")
    assert continuation_overrides(run) == []  # a lock alone is no run
    (run / "metrics.jsonl").write_text('{"step": 3, "train/loss": 1.0}\n')
    assert continuation_overrides(run) == ["overwrite=true"]
    assert "no complete checkpoint" in capsys.readouterr().out
    save_resumable(run, 4, model=_module(1), trainer_state={"step": 4}, meta={"step": 4})
    assert continuation_overrides(run) == ["resume=true"]
    model_file = run / "checkpoints" / "state-00000004" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-8])  # the only checkpoint is torn: nothing to resume
    assert continuation_overrides(run) == ["overwrite=true"]


def test_a_latest_directory_of_an_older_run_is_resumed_and_then_replaced_by_a_link(tmp_path):
    save_checkpoint(tmp_path / "checkpoints" / "latest", model=_module(1), trainer_state={"step": 5}, meta={"step": 5})
    assert find_resumable(tmp_path)[0] == tmp_path / "checkpoints" / "latest"
    save_resumable(tmp_path, 6, model=_module(2), trainer_state={"step": 6}, meta={"step": 6})
    latest = tmp_path / "checkpoints" / "latest"
    assert latest.is_symlink() and read_meta(latest)["step"] == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "state-00000006"]


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    save_checkpoint(tmp_path / "c", model=_module(0), trainer_state={"step": 0})
    names = {Path(p).name for p in synced}
    assert {"model.safetensors", "trainer_state.pt", "meta.json"} <= names
    assert all(".tmp-" in p for p in synced if Path(p).name.endswith((".safetensors", ".pt")))


def test_a_trainer_resumes_after_its_latest_link_is_lost(tmp_path):
    torch.manual_seed(0)
    full = _trainer(tmp_path / "full", NoisyRegressor(), checkpoint_every_steps=7)
    full.fit()
    torch.manual_seed(0)
    model = NoisyRegressor()
    model.crash_at = 9
    with pytest.raises(Crash):
        _trainer(tmp_path / "cut", model, checkpoint_every_steps=7).fit()
    (tmp_path / "cut" / "checkpoints" / "latest").unlink()  # e.g. killed while replacing it (old code)
    torch.manual_seed(0)
    resumed = _trainer(tmp_path / "cut", NoisyRegressor(), checkpoint_every_steps=7)
    resumed.fit(resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- 4. stores: missing and damaged chunks

@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    data = {"action": rng.normal(size=(30, 2)).astype(np.float32),
            "img": rng.integers(0, 255, (30, 8, 8, 3), dtype=np.uint8)}
    return write_replay_buffer(tmp_path / "s.zarr", data, [10, 30])


def test_a_missing_chunk_is_an_error_not_zeros(store):
    (store / "data" / "action" / "0.0").unlink()
    with pytest.raises(StoreIntegrityError, match=r"s\.zarr: incomplete store.*data/action: 1 of 1 chunks missing \(first: data/action/0\.0\)"):
        ReplayBuffer.open(store)


def test_a_truncated_chunk_names_store_array_and_chunk(store):
    chunk = sorted((store / "data" / "img").glob("[0-9]*"))[3]
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(StoreIntegrityError, match=rf"s\.zarr: array data/img: chunk data/img/{chunk.name} cannot be read"):
        ReplayBuffer.open(store)


def test_a_store_that_no_longer_matches_its_manifest_is_refused(store):
    import zarr

    zarr.open_group(str(store), mode="r+")["meta/episode_ends"][0] = 5
    with pytest.raises(StoreIntegrityError, match="meta/episode_ends does not match its manifest"):
        ReplayBuffer.open(store)


def _episodes(n, crash_at=None):
    for i in range(n):
        if i == crash_at:
            raise KeyboardInterrupt("killed mid-recording")
        yield {"data": {"action": np.full((5, 2), i, np.float32)}, "success": True}


def test_replacing_a_store_never_leaves_a_partly_deleted_one(tmp_path):
    path = tmp_path / "d.zarr"
    record_demos(path, _episodes(3), progress=False)
    with pytest.raises(KeyboardInterrupt):
        record_demos(path, _episodes(3, crash_at=2), overwrite=True, progress=False)
    assert ReplayBuffer.open(path).n_episodes == 3
    assert [p.name for p in tmp_path.iterdir()] == ["d.zarr"]


# ---------------------------------------------------------------- 5. the demo cache knows what made it

def make_episodes(episodes: int = 2, seed_start: int = 0, workers: int = 1):
    for i in range(episodes):
        yield {"data": {"action": np.full((4, 2), seed_start + i, np.float32)}, "success": True}


def test_a_cached_store_recorded_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "demos.zarr"
    ensure_demos(path, partial(make_episodes, episodes=2), progress=False)
    assert ensure_demos(path, partial(make_episodes, episodes=2, workers=4), progress=False) == path  # speed only
    with pytest.raises(ReplayBufferError, match=r"other settings .*settings\.seed_start: stored 0, asked 500"):
        ensure_demos(path, partial(make_episodes, episodes=2, seed_start=500), progress=False)
    with pytest.raises(ReplayBufferError, match=r"keep_failed: stored False, asked True"):
        ensure_demos(path, partial(make_episodes, episodes=2), keep_failed=True, progress=False)


# ---------------------------------------------------------------- 6. orphaned temporaries

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphaned_temporaries_are_cleaned_and_a_lost_original_restored(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".latest.tmp-{dead}").mkdir()
    (tmp_path / f".pusht.zarr.build-{dead}-0123abcd").mkdir()
    (tmp_path / f".epoch0001-score0.500.old-{dead}-0123abcd").mkdir()  # its original is gone: the only copy
    (tmp_path / f".busy.zarr.tmp-{os.getpid()}-0123abcd").mkdir()  # a live writer's work
    done = {path.name: action for path, action, _ in clean_orphans(tmp_path)}
    assert done == {f".latest.tmp-{dead}": "removed", f".pusht.zarr.build-{dead}-0123abcd": "removed",
                    "epoch0001-score0.500": "restored"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".busy.zarr.tmp-{os.getpid()}-0123abcd", "epoch0001-score0.500"]


def test_a_run_reports_the_orphans_it_cleans(data_dir, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / f".metrics.jsonl.tmp-{_dead_pid()}-0123abcd").write_text("{}")
    with run_directory(_cfg(data_dir, tmp_path / "r")):
        pass
    assert "cleaned 1 temporaries left by killed processes" in capsys.readouterr().out


# ---------------------------------------------------------------- 7. damaged files are named

def test_truncated_checkpoint_files_are_named(tmp_path):
    path = save_checkpoint(tmp_path / "c", model=_module(0), trainer_state={"step": 0, "x": torch.zeros(1000)})
    for name in ("model.safetensors", "trainer_state.pt"):
        (path / name).write_bytes((path / name).read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"c/model\.safetensors cannot be read"):
        load_weights(_module(0), path)
    with pytest.raises(CheckpointError, match=r"c/trainer_state\.pt cannot be read"):
        load_trainer_state(path)


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    _trainer(tmp_path, NoisyRegressor(), num_epochs=2).fit()
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 99, "train/lo')
    _trainer(tmp_path, NoisyRegressor(), num_epochs=3).fit(resume=True)
    assert "dropped 1 unreadable line" in capsys.readouterr().out
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


# ---------------------------------------------------------------- 8. a monitor that is not a metric

def test_a_misspelt_monitor_fails_with_the_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"monitor='test/mean_scor' .*valid keys: \['test/mean_score'\]"):
        _trainer(tmp_path, NoisyRegressor(), monitor="test/mean_scor").fit()


# ---------------------------------------------------------------- 9-11. eval.py

def test_eval_rejects_zero_inference_steps(finished_run, tmp_path):
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\], got 0"):
        run_evaluation(compose("eval", [f"checkpoint={finished_run}", "inference_steps=0", f"output_dir={tmp_path / 'e'}"]))


def test_eval_runs_the_reference_protocol_by_default(finished_run, tmp_path):
    # The smoke run evaluated 8-step episodes; eval.py scores with the task's protocol (300 steps).
    record = run_evaluation(compose("eval", [f"checkpoint={finished_run}", "n_train=0", "n_test=1", "n_envs=1",
                                             f"output_dir={tmp_path / 'e'}"]))
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert saved["protocol"] == record["protocol"]
    assert record["protocol"] == {"n_train": 0, "n_test": 1, "train_seed_start": 0, "test_seed_start": 100000,
                                  "max_steps": 300, "n_envs": 1, "vector_env": "sync", "seed": 0}


def test_eval_errors_are_one_line_and_leave_no_output_directory(tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "eval.py", f"checkpoint={tmp_path / 'nope'}", f"output_dir={out}"],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, FIBPOLICY_RUNS_DIR=str(tmp_path / "runs")))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"[fibpolicy] error: checkpoint {tmp_path / 'nope'} is not a directory (expected a run or checkpoint directory)"
        "  (FIBPOLICY_TRACEBACK=1 shows the traceback)"]
    assert not out.exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- 13. say where things are

def test_progress_bar_total_is_the_steps_the_run_takes(tmp_path, capsys):
    _trainer(tmp_path, NoisyRegressor(), num_epochs=4, max_steps=7, progress=True).fit()
    err = capsys.readouterr().err
    assert "7/7" in err and "/86" not in err


# ---------------------------------------------------------------- 14. disk

def test_checkpoints_keep_trainer_state_once_and_weights_once(finished_run):
    ckpts = finished_run / "checkpoints"
    states = sorted(p.name for p in ckpts.glob("state-*"))
    assert states == ["state-00000004"] and os.readlink(ckpts / "latest") == "state-00000004"
    topk = [p for p in ckpts.glob("epoch*")]
    assert topk and all(sorted(f.name for f in p.iterdir()) == ["config.yaml", "ema.safetensors", "meta.json"] for p in topk)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (ckpts / "latest").iterdir()}
    assert len(set(modes.values())) == 1, modes  # safetensors files no longer 0600 while the rest is 0644


def test_an_ema_equal_to_the_model_is_stored_once(tmp_path):
    model = _module(0)
    path = save_checkpoint(tmp_path / "c", model=model, ema_model=_module(0))
    assert not (path / "ema.safetensors").exists() and read_meta(path)["ema_is_model"]
    loaded = load_weights(_module(1), path, ema=True)
    assert torch.equal(loaded.weight, model.weight)
