"""Every command the README shows, run as written on empty data and run directories, shrunk only in sizes.

The README is parsed: a command added there without a case here fails ``test_every_readme_command_is_tested``.
Shrinking sets keys (episodes, steps, sizes, evaluation episodes); a key the command already sets is
replaced, never added twice. ``runs/<run>`` and ``/path/...zarr`` placeholders become a real run directory
and a store in the public layout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN_HERE = ("python3 -m venv", "pip ", "pytest")  # install and test: what CI itself runs

QUIET = ["training.trainer.progress=false", "task.evaluator.progress=false", "+task.prepare.progress=false"]
TRAIN = ["training.trainer.num_epochs=1", "training.trainer.max_steps=2", "training.trainer.batch_size=2",
         "training.trainer.num_workers=0", "training.trainer.log_every_steps=1"]
EVAL = ["task.evaluator.n_train=1", "task.evaluator.n_test=1", "task.evaluator.n_envs=2", "task.evaluator.max_steps=8"]
UNET = ["policy.down_dims=[16,32,64]", "policy.diffusion_step_embed_dim=16", "policy.num_inference_steps=2"]
DEMOS = ["task.prepare.source.episodes=2"]
ONE_BLOCK = ["++encoder.depth=1"]  # ++: the default encoder config sets a depth, vit_fib_tiny does not
POLICY_RUN = DEMOS + UNET + TRAIN + EVAL + QUIET
# Two scripted demos (one validation), recorded in one process, and the policy run's sizes.
ROBOMIMIC = ["task.robomimic.demos=2", "task.prepare.generate.source.workers=1", "task.dataset.val_ratio=0.5"] + UNET + TRAIN + EVAL + QUIET
SMOKE = ONE_BLOCK + ["training.trainer.progress=false", "task.evaluator.progress=false", "+task.prepare.progress=false"]

# README command -> the overrides that shrink it.
CASES: dict[str, list[str]] = {
    "python prepare.py": DEMOS + ["+task.prepare.progress=false"],
    "python train.py": POLICY_RUN + ONE_BLOCK,
    "python train.py training=smoke": SMOKE,
    "python train.py task=pusht_lowdim": POLICY_RUN,
    "python train.py encoder=vit_fib_tiny": POLICY_RUN + ONE_BLOCK,
    "python train.py encoder=vit_dense_cpu": POLICY_RUN + ONE_BLOCK,
    "python train.py experiment=fib_paper_pusht_image": POLICY_RUN + ONE_BLOCK,
    "python train.py experiment=pusht_lowdim": POLICY_RUN,
    "python train.py policy=diffusion_unet_crossway": POLICY_RUN + ONE_BLOCK,
    "python -m fibpolicy.plot runs/<run> --out curves.png": [],
    "python train.py task=lift_lowdim": ROBOMIMIC,
    "python train.py task=can_lowdim": ROBOMIMIC,
    "python train.py task=lift_image": ROBOMIMIC + ONE_BLOCK,
    "python train.py task=can_image": ROBOMIMIC + ONE_BLOCK,
    "python train.py encoder=resnet18_gn": POLICY_RUN,
    "python train.py task.dataset.zarr_path=/path/pusht_cchi_v7_replay.zarr": POLICY_RUN + ONE_BLOCK,
    "python train.py resume=true run_dir=runs/<run>": POLICY_RUN + ONE_BLOCK + ["training.trainer.max_steps=4"],
    "torchrun --nproc_per_node=2 train.py training=smoke": SMOKE + ["training.trainer.max_steps=2"],
    "python -m fibpolicy.record_robomimic_demos --task lift --out data/lift_expert.hdf5 --episodes 200 --workers 2": [
        "--episodes 1", "--workers 1"],
    "python eval.py checkpoint=runs/<run>": ["n_train=1", "n_test=1", "n_envs=2", "max_steps=8"],
    "python eval.py checkpoint=runs/<run> n_test=10 inference_steps=16 scheduler=ddim": ["n_train=0", "n_test=1", "n_envs=1", "inference_steps=2", "max_steps=8"],
    "python eval.py checkpoint=runs/<run> fast_inference=bf16": ["n_train=1", "n_test=1", "n_envs=2", "max_steps=8"],
    # On a CPU the suite itself shrinks every part (FIBPOLICY_SUITE_SCALE=tiny) and skips the CUDA ones.
    "bash benchmarks/gpu_suite.sh results/gpu": [],
}


def readme_commands() -> list[str]:
    """Shell commands in the README's bash blocks and in backticked table cells."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                commands.append(line)
    for row in text.splitlines():
        if row.startswith("|"):
            commands += re.findall(r"`((?:python|torchrun) [^`]+)`", row)
    return [c for c in dict.fromkeys(commands) if not c.startswith(NOT_RUN_HERE)]


def shrink(command: str, overrides: list[str]) -> list[str]:
    """The command's words, each override replacing the command's own value for its key, or appended.

    ``--flag value`` overrides replace the value after the command's own ``--flag``.
    """
    words = shlex.split(command)
    for override in overrides:
        if override.startswith("--"):
            flag, value = override.split(" ", 1)
            words[words.index(flag) + 1] = value
            continue
        key = override.split("=", 1)[0].lstrip("+")
        same = [i for i, w in enumerate(words) if w.split("=", 1)[0].lstrip("+") == key]
        if same:
            words[same[0]] = override
        else:
            words.append(override)
    return words


def run(command: str, env: dict, substitutions: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a README command, shrunk by its case, with placeholders replaced."""
    words = shrink(command, CASES[command])
    for placeholder, value in (substitutions or {}).items():
        words = [w.replace(placeholder, value) for w in words]
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "torchrun":
        words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    res = subprocess.run(words, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(words)}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("readme")
    env = dict(os.environ, FIBPOLICY_DATA_DIR=str(base / "data"), FIBPOLICY_RUNS_DIR=str(base / "runs"),
               OMP_NUM_THREADS="1")
    return base, env


def _runs(base: Path) -> set[Path]:
    return {p for p in (base / "runs").iterdir() if (p / "config.yaml").is_file()} if (base / "runs").exists() else set()


def _train(command: str, dirs, substitutions=None) -> tuple[Path, subprocess.CompletedProcess]:
    base, env = dirs
    before = _runs(base)
    res = run(command, env, substitutions)
    new = _runs(base) - before
    assert "[fibpolicy] done" in res.stdout
    if substitutions and "runs/<run>" in substitutions:
        assert not new, f"run_dir= was given, yet {new} appeared"  # no stray run directories
    run_dir = new.pop() if new else Path(substitutions["runs/<run>"])
    assert f"[fibpolicy] run directory: {run_dir}" in res.stdout
    assert (run_dir / "checkpoints" / "latest" / "model.safetensors").is_file()
    # Hydra writes nothing of its own; the run writes only what it fills.
    assert not (run_dir / ".hydra").exists() and not list(run_dir.glob("*.log"))
    assert not list(ROOT.glob("*.log")), "a log file was written into the working directory"
    return run_dir, res


def _train_losses(run_dir: Path) -> list[int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_every_readme_command_is_tested():
    commands = readme_commands()
    assert not set(commands) - set(CASES), f"README commands without a test: {sorted(set(commands) - set(CASES))}"
    assert not set(CASES) - set(commands), f"tested commands no longer in the README: {sorted(set(CASES) - set(commands))}"


def test_the_default_config_builds_the_cpu_recipe():
    cfg = compose("train", [])
    assert cfg.task.name == "pusht_image" and cfg.task.prepare.source.workers is None  # the machine's cores
    from hydra.utils import instantiate

    policy = instantiate(cfg.policy, _convert_="all")
    encoder = policy.obs_encoder.encoder_for("image")
    vit = encoder.vit
    assert vit.embed_dim == 128 and len(vit.blocks) == 4 and vit.patch_embed.patch_size == (8, 8)
    assert vit.patch_embed.img_size == (84, 84) and encoder.pool == "spatial_softmax" and encoder.output_dim == 64
    assert type(vit.blocks[0].attn).__name__ == "FibottentionAttention"
    assert policy.global_cond_dim == (64 + 2) * 2 and policy.model.down_dims == [64, 128, 256]
    assert (policy.inference_scheduler_name, policy.num_inference_steps) == ("ddim", 16)
    assert cfg.task.dataset.max_train_episodes is None and cfg.training.trainer.num_epochs == 40


def test_the_paper_experiment_builds_the_full_paper_model():
    cfg = compose("train", ["experiment=fib_paper_pusht_image"])
    assert cfg.task.dataset.max_train_episodes == 90 and cfg.training.trainer.num_epochs == 501
    assert cfg.training.trainer.optimizer.lr == 1e-4 and cfg.training.trainer.batch_size == 64
    from hydra.utils import instantiate

    with torch.device("meta"):
        policy = instantiate(cfg.policy, _convert_="all")
    encoder = policy.obs_encoder.encoder_for("image")
    vit = encoder.vit
    assert vit.embed_dim == 768 and len(vit.blocks) == 12 and vit.patch_embed.patch_size == (8, 8) and encoder.pool == "mean"
    assert vit.patch_embed.img_size == (84, 84) and policy.obs_encoder.crop_shapes["image"] == (84, 84)
    assert type(vit.blocks[0].attn).__name__ == "FibottentionAttention"
    assert policy.global_cond_dim == (768 + 2) * 2
    assert (policy.inference_scheduler_name, policy.num_inference_steps) == ("ddpm", 100)
    unet = sum(p.numel() for p in policy.model.parameters())
    assert [m.out_channels for m in policy.model.modules() if isinstance(m, torch.nn.Conv1d)][0] == 512
    assert unet > 250_000_000


def test_the_lowdim_experiment_is_the_measured_recipe():
    cfg = compose("train", ["experiment=pusht_lowdim"])
    t = cfg.training.trainer
    assert cfg.task.name == "pusht_lowdim" and list(cfg.policy.down_dims) == [64, 128, 256]
    assert (t.batch_size, t.num_epochs, t.lr_warmup_steps, t.optimizer.lr, t.precision) == (256, 60, 200, 3e-4, "fp32")


def test_prepare(dirs):
    base, env = dirs
    run("python prepare.py", env)
    from fibpolicy.data import ReplayBuffer

    assert ReplayBuffer.open(base / "data" / "pusht_expert_200.zarr").n_episodes == 2


@pytest.fixture(scope="module")
def default_run(dirs):
    return _train("python train.py", dirs)


def test_main_command_records_demos_once_and_trains(dirs, default_run):
    base, _ = dirs
    run_dir, res = default_run
    assert "not found: recording" not in res.stderr  # prepare.py already recorded the store: reused
    assert _train_losses(run_dir) == [1, 2]
    assert (run_dir / "eval" / "epoch0000.json").is_file() and (run_dir / "config.yaml").is_file()


# What each variant's run must show in its config.yaml (the group choice itself is not stored).
VARIANTS = {
    "python train.py training=smoke": {},
    "python train.py task=pusht_lowdim": {"task.name": "pusht_lowdim"},
    "python train.py encoder=vit_fib_tiny": {"encoder.embed_dim": None, "encoder.pool": "mean"},
    "python train.py encoder=vit_dense_cpu": {"encoder.attention": "dense", "encoder.pool": "spatial_softmax"},
    "python train.py encoder=resnet18_gn": {"encoder._target_": "fibpolicy.encoders.create_resnet18_gn_encoder"},
    "python train.py experiment=fib_paper_pusht_image": {"encoder.model_name": "vit_fib_base_patch16_224", "task.dataset.max_train_episodes": 90},
    "python train.py experiment=pusht_lowdim": {"task.name": "pusht_lowdim", "training.trainer.precision": "fp32"},
    "python train.py policy=diffusion_unet_crossway": {"policy._target_": "fibpolicy.policy.CrosswayDiffusionUnetPolicy"},
}


@pytest.mark.parametrize("command", list(VARIANTS))
def test_training_variants(dirs, command):
    run_dir, _ = _train(command, dirs)
    record = json.loads((run_dir / "eval" / "epoch0000.json").read_text())
    assert record["test/n_episodes"] >= 1
    cfg = OmegaConf.load(run_dir / "config.yaml")
    for key, value in VARIANTS[command].items():
        assert OmegaConf.select(cfg, key) == value, key


def test_public_dataset_path_is_used_as_it_is(dirs, tmp_path):
    from fibpolicy.data import write_replay_buffer

    rng = np.random.default_rng(0)
    lengths = [30, 26, 34]
    n = sum(lengths)
    store = write_replay_buffer(tmp_path / "pusht_cchi_v7_replay.zarr", {
        "img": rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8), "state": rng.uniform(60, 450, (n, 5)).astype(np.float32),
        "action": rng.uniform(60, 450, (n, 2)).astype(np.float32), "keypoint": rng.uniform(60, 450, (n, 9, 2)).astype(np.float32),
        "n_contacts": np.zeros((n, 1), np.float32)}, np.cumsum(lengths))
    command = "python train.py task.dataset.zarr_path=/path/pusht_cchi_v7_replay.zarr"
    run_dir, res = _train(command, dirs, {"/path/pusht_cchi_v7_replay.zarr": str(store)})
    assert "recording" not in res.stderr
    assert OmegaConf.load(run_dir / "config.yaml").task.dataset.zarr_path == str(store)


def test_eval_reproduces_the_training_time_score(dirs, default_run):
    base, env = dirs
    run_dir, _ = default_run
    logged = json.loads((run_dir / "eval" / "epoch0000.json").read_text())
    command = "python eval.py checkpoint=runs/<run>"
    res = run(command, env, {"runs/<run>": str(run_dir)})
    out = Path(re.search(r"-> (\S+)/eval\.json", res.stdout).group(1))
    record = json.loads((out / "eval.json").read_text())
    assert record["n_episodes"] == 1 and [e["seed"] for e in record["episodes"]] == [0, 100000]
    assert record["protocol"]["max_steps"] == 8 and record["protocol"]["test_seed_start"] == 100000
    assert record["mean_score"] == logged["test/mean_score"] and record["train/mean_score"] == logged["train/mean_score"]

    command = "python eval.py checkpoint=runs/<run> n_test=10 inference_steps=16 scheduler=ddim"
    res = run(command, env, {"runs/<run>": str(run_dir)})
    out = Path(re.search(r"-> (\S+)/eval\.json", res.stdout).group(1))
    record = json.loads((out / "eval.json").read_text())
    assert record["inference"]["scheduler"] == "ddim" and record["inference"]["steps"] == 2 and record["n_episodes"] == 1

    command = "python eval.py checkpoint=runs/<run> fast_inference=bf16"
    res = run(command, env, {"runs/<run>": str(run_dir)})
    out = Path(re.search(r"-> (\S+)/eval\.json", res.stdout).group(1))
    record = json.loads((out / "eval.json").read_text())
    assert record["inference"]["fast"] == "bf16" and record["n_episodes"] == 1
    assert [e["seed"] for e in record["episodes"]] == [0, 100000]  # the same protocol, another sampler path


CUDA_SUITE_PARTS = ("cuda_tests", "triton_check", "attention_flex")
SUITE_PARTS = ("attention", "policy", "pusht_train", "pusht_eval", "pusht_eval_fast", "lift_envs", "lift_train", "lift_result")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the suite's CPU path (on a GPU it runs at full size)")
def test_gpu_suite_runs_every_part(dirs, tmp_path):
    base, env = dirs
    results = tmp_path / "gpu"
    suite_env = {**env, "PYTHON": sys.executable, "FIBPOLICY_DATA_DIR": str(tmp_path / "data")}  # its own demos
    run("bash benchmarks/gpu_suite.sh results/gpu", suite_env, {"results/gpu": str(results)}, timeout=900)
    summary = (results / "results.md").read_text()
    for name in CUDA_SUITE_PARTS:
        assert re.search(rf"## {name}\nskipped: no CUDA", summary), name
    for name in SUITE_PARTS:
        assert re.search(rf"part {name}: exit 0, \d+ s", summary), (name, summary[-3000:])
    assert "suite: 0 part(s) failed" in summary and "scale: tiny" in summary
    # the benchmarks wrote their rows, the runs their checkpoints, the evaluations their records
    assert json.loads((results / "policy.json").read_text())["latency"]
    assert [r for r in json.loads((results / "attention.json").read_text()) if r["method"] == "cpu"]
    plain = json.loads((results / "pusht_eval" / "eval.json").read_text())
    fast = json.loads((results / "pusht_eval_fast" / "eval.json").read_text())
    assert plain["inference"]["fast"] is None and fast["inference"]["fast"] == "bf16"
    assert plain["n_episodes"] == fast["n_episodes"] == 1
    assert not list(results.rglob("*.mp4"))  # no PyAV on the GPU machine: the suite records no videos
    assert (results / "lift_run" / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert "| lift_run |" in summary and "| pusht_run |" in summary


def test_plot_command_draws_the_run(dirs, default_run, tmp_path):
    base, env = dirs
    run_dir, _ = default_run
    res = run("python -m fibpolicy.plot runs/<run> --out curves.png", env,
              {"runs/<run>": str(run_dir), "curves.png": str(tmp_path / "curves.png")})
    assert "wrote" in res.stdout and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_the_run(dirs, default_run):
    run_dir, _ = default_run
    _train("python train.py resume=true run_dir=runs/<run>", dirs, {"runs/<run>": str(run_dir)})
    assert _train_losses(run_dir) == [1, 2, 3, 4]


def test_torchrun(dirs):
    run_dir, res = _train("torchrun --nproc_per_node=2 train.py training=smoke", dirs)
    assert _train_losses(run_dir) == [1, 2]


def test_readme_python_snippets_run():
    """The README's Python blocks run as written (the one that needs a trained run gets one from a fixture elsewhere)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    runnable = [b for b in blocks if "runs/<run>" not in b]
    assert runnable, "the README has no self-contained Python example"
    for block in runnable:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_policy_snippet_runs_on_a_trained_run(default_run):
    run_dir, _ = default_run
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "runs/<run>" in b]
    obs = {"image": torch.rand(1, 2, 3, 96, 96), "agent_pos": torch.rand(1, 2, 2) * 512}
    step = {"image": torch.rand(1, 3, 96, 96), "agent_pos": torch.rand(1, 2) * 512}
    scope = {"obs": obs, "step": step}
    exec(compile(block.replace("runs/<run>", str(run_dir)), "README.md", "exec"), scope)
    assert scope["action"].shape == (1, 8, 2) and scope["a"].shape == (1, 2) and scope["fast"].shape == (1, 8, 2)
    assert scope["policy"]._fast is not None


def test_robomimic_demos_command(dirs):
    base, env = dirs
    command = "python -m fibpolicy.record_robomimic_demos --task lift --out data/lift_expert.hdf5 --episodes 200 --workers 2"
    out = base / "data" / "lift_expert.hdf5"
    res = run(command, env, {"data/lift_expert.hdf5": str(out)})
    assert "1 of 1 lift demos" in res.stdout + res.stderr
    import h5py

    with h5py.File(out) as f:
        assert f["data"].attrs["total"] == len(f["data/demo_0/actions"]) and "actions_abs" in f["data/demo_0"]


@pytest.mark.parametrize("task", ["lift_lowdim", "lift_image", "can_lowdim", "can_image"])
def test_robomimic_tasks_train_and_eval_scores_them(dirs, task):
    """Each robomimic task records its demos (once per task: low-dim and image share the HDF5 file),
    caches them, trains, evaluates by the protocol, and eval.py re-scores the checkpoint."""
    base, env = dirs
    run_dir, res = _train(f"python train.py task={task}", dirs)
    robot = task.split("_")[0]
    assert (base / "data" / f"{robot}_expert_2.hdf5").is_file()
    cached = "image_abs" if task.endswith("image") else "lowdim_abs"
    assert (base / "data" / f"{robot}_expert_2.{cached}.zarr").is_dir()
    logged = json.loads((run_dir / "eval" / "epoch0000.json").read_text())
    assert [(e["prefix"], e["seed"]) for e in logged["episodes"]] == [("train", 0), ("test", 100000)]
    assert 0 < logged["memory"]["env_uss_mb_mean"] <= logged["memory"]["env_rss_mb_max"]
    assert (run_dir / "videos" / "epoch0000_train_seed0.mp4").stat().st_size > 0  # agentview video
    res = run("python eval.py checkpoint=runs/<run>", env, {"runs/<run>": str(run_dir)})
    out = Path(re.search(r"-> (\S+)/eval\.json", res.stdout).group(1))
    record = json.loads((out / "eval.json").read_text())
    assert record["protocol"]["max_steps"] == 8 and record["n_episodes"] == 1
    assert record["mean_score"] == logged["test/mean_score"] and record["train/mean_score"] == logged["train/mean_score"]
    if task == "lift_lowdim":  # the README's evaluation-cost benchmark, on this run
        bench = subprocess.run([sys.executable, "benchmarks/robomimic_eval.py", str(run_dir), "--n-envs", "1", "--n-test", "1",
                                "--n-train", "1", "--max-steps", "8"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert bench.returncode == 0, bench.stderr[-3000:]
        rows = [line for line in bench.stdout.splitlines() if line.startswith(("| on |", "| off |"))]
        assert len(rows) == 2 and all("| 1 |" in r for r in rows), bench.stdout
