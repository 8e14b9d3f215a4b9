"""The encoder study script end to end at tiny sizes: arms train, a rerun resumes, the report is written."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["task.prepare.source.episodes=2", "task.prepare.source.workers=1", "++encoder.depth=1", "policy.down_dims=[16,32,64]",
        "policy.diffusion_step_embed_dim=16", "policy.num_inference_steps=2", "training.trainer.num_epochs=1",
        "training.trainer.max_steps=2", "training.trainer.batch_size=2", "task.evaluator.n_train=1", "task.evaluator.n_test=1",
        "task.evaluator.n_envs=2", "task.evaluator.max_steps=8", "training.trainer.progress=false",
        "task.evaluator.progress=false", "+task.prepare.progress=false"]


def _study(out, env, *extra):
    cmd = [sys.executable, "benchmarks/pusht_encoders.py", "--arms", "fib", "crossway", "--minutes", "30", "--out", str(out), *extra]
    res = subprocess.run(cmd + ["--", *TINY], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


def test_study_trains_each_arm_resumes_and_reports(tmp_path):
    env = dict(os.environ, FIBPOLICY_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    out = tmp_path / "study"
    res = _study(out, env)
    table = (out / "pusht_encoders.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| fib |", "| crossway |"))]
    assert len(rows) == 2 and "| fib | 2 |" in rows[0]
    assert (out / "pusht_encoders.png").read_bytes()[:4] == b"\x89PNG"
    assert "max_minutes=30" in res.stdout and (out / "crossway" / "config.yaml").is_file()

    again = _study(out, env)  # a rerun resumes each arm, which is already finished
    assert again.stdout.count("resume=true") == 2 and "already finished" in again.stdout
    assert (out / "pusht_encoders.md").read_text() == table
