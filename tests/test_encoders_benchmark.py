"""benchmarks/encoders.py end to end at quick sizes: each arm trains, its row comes from the run's log,
an arm killed before its first checkpoint is started again, and a rerun reads the finished runs back
instead of training them again."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(out: Path, env: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    rows_file = out / "rows.json"
    cmd = [sys.executable, "benchmarks/encoders.py", "--quick", "--tasks", "digits", "--arms", "fib", "fcvit",
           "--out", str(out), "--json", str(rows_file), "--no-progress", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res, json.loads(rows_file.read_text())


def test_encoder_comparison_trains_each_arm_and_a_rerun_reads_it_back(tmp_path):
    env = dict(os.environ, FIBPOLICY_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    out = tmp_path / "cmp"
    killed = out / "digits_fib"  # an earlier try killed before its first checkpoint: nothing to resume
    killed.mkdir(parents=True)
    (killed / "metrics.jsonl").write_text(json.dumps({"step": 1, "test/top1": -1.0, "wall_time_s": 1.0}) + "\n")
    res, rows = _bench(out, env)
    assert "no complete checkpoint to resume" in res.stdout and "starting it again" in res.stdout
    assert [(r["task"], r["arm"]) for r in rows] == [("digits", "fib"), ("digits", "fcvit")]
    for r in rows:
        logged = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        last = [row for row in logged if "test/top1" in row][-1]
        assert r["top1"] == last["test/top1"] and r["minutes"] == last["wall_time_s"] / 60 and r["minutes"] > 0
    assert rows[0]["top1"] >= 0  # the killed try's row is gone with it
    assert rows[0]["density"] < 1.0 and rows[1]["density"] is None  # the sparse ViT, then the CNN
    assert "| digits | fib | vit_fib_tiny |" in res.stdout and "| digits | fcvit | fcvit_tiny |" in res.stdout

    again, rows_again = _bench(out, env)
    assert again.stdout.count("already finished") == 2
    assert rows_again == rows
