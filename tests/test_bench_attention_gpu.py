"""The GPU measurement scripts work on a CPU machine: benchmarks/triton_check.py and benchmarks/attention.py.

Each runs as a subprocess (``sys.executable``): triton_check.py sets TRITON_INTERPRET before triton is
imported, which must not leak into the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fibpolicy.attention.backends import triton_diag

REPO = Path(__file__).resolve().parents[1]
TRITON_CHECK = REPO / "benchmarks" / "triton_check.py"
ATTENTION = REPO / "benchmarks" / "attention.py"

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
needs_triton = pytest.mark.skipif(triton_diag.triton is None, reason="triton is not installed")


def _run(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@no_cuda
def test_triton_check_without_cuda_skips_and_exits_0(tmp_path):
    proc = _run(TRITON_CHECK, "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipped: no CUDA" in proc.stdout
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["rows"] == [] and record["note"] == "skipped: no CUDA"


@needs_triton
def test_triton_check_interpreted_row_passes(tmp_path):
    out = tmp_path / "r.json"
    proc = _run(TRITON_CHECK, "--interpret", "--tokens", "65", "--modes", "additive", "--dtypes", "float32",
                "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| 65 | 1 | additive | float32 |" in proc.stdout and "1 passed, 0 failed" in proc.stdout
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["interpret"] is True and record["passed"] is True
    assert row["passed"] and row["finite"] and row["dtypes_kept"]
    assert all(0 < row[f] < 1e-3 for f in ("out", "dq", "dk", "dv"))  # nonzero: real random inputs


@needs_triton
def test_triton_check_interpret_refuses_large_t():
    proc = _run(TRITON_CHECK, "--interpret", "--tokens", "785")
    assert proc.returncode == 2 and "small T only" in proc.stderr


def test_attention_benchmark_json_rows_and_flex_on_cpu(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run(ATTENTION, "--device", "cpu", "--methods", "sdpa", "flex", "cpu", "--tokens", "65",
                "--repeats", "1", "--no-memory", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())  # strict JSON: NaN is written as null
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == {"sdpa", "flex", "cpu"}  # --methods: no pattern rows
    for key in ("sdpa", "cpu"):
        r = by_key[key]
        assert r["tokens"] == 65 and r["dtype"] == "float32" and r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0
        assert "skipped" not in r and r["peak_mb"] is None
    assert by_key["sdpa"]["method"] == "sdpa" and by_key["cpu"]["method"] == "cpu"
    assert "CUDA only" in by_key["flex"]["skipped"] and by_key["flex"]["fwd_ms"] is None
    assert "flex" in proc.stdout and "skipped: flex runs on CUDA only" in proc.stdout


def test_attention_benchmark_budget_skips_and_says_so(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run(ATTENTION, "--device", "cpu", "--methods", "cpu", "--tokens", "65", "197", "--repeats", "1",
                "--no-memory", "--max-seconds", "0", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--max-seconds 0" in proc.stdout and "skipping T=65 float32 (all methods)" in proc.stdout
    assert json.loads(out.read_text()) == []
