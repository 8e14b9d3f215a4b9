"""Generate PushT demonstrations with the scripted expert and write them in the public replay-buffer layout.

    python -m envs.pusht.demos --out data/pusht_expert.zarr --episodes 200 --seed-start 0 --workers 2

The output is a zarr format-2 group laid out like ``pusht_cchi_v7_replay.zarr``:

- ``data/img`` uint8 (n, 96, 96, 3), one frame per chunk; ``data/state`` float32 (n, 5)
  ``[agent_x, agent_y, block_x, block_y, block_angle]`` (raw pymunk angle, as the reference's
  recorder stores it); ``data/action`` float32 (n, 2); ``data/keypoint`` float32 (n, 9, 2);
  ``data/n_contacts`` float32 (n, 1);
- ``meta/episode_ends`` int64 (cumulative), ``meta/episode_seeds`` int64 and
  ``meta/episode_success`` bool, one per episode.

Row t of an episode holds the observation *before* action t and action t itself, as in the public
dataset; the state reached by the last action (the success) is not stored. Episodes are stored in
seed order. Replaying an episode's actions from its seed (legacy reset) reproduces its states.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numcodecs
import numpy as np
import zarr
from tqdm import tqdm

from envs.pusht.env import MAX_EPISODE_STEPS, PushTEnv
from envs.pusht.expert import ExpertConfig, PushTExpert
from envs.pusht.keypoints import N_BLOCK_KEYPOINTS, block_keypoints

IMG_SIZE = 96
_IMG_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
_LOWDIM_CHUNK = 4096
# Array name -> per-step shape and dtype.
DATA_SPEC = {
    "img": ((IMG_SIZE, IMG_SIZE, 3), np.uint8),
    "state": ((5,), np.float32),
    "action": ((2,), np.float32),
    "keypoint": ((N_BLOCK_KEYPOINTS, 2), np.float32),
    "n_contacts": ((1,), np.float32),
}


@dataclass
class Episode:
    """One recorded expert episode."""

    seed: int
    success: bool
    data: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        """Number of (observation, action) rows."""
        return len(self.data["action"])


def record_episode(seed: int, max_steps: int = MAX_EPISODE_STEPS, config: ExpertConfig | None = None) -> Episode:
    """Run the expert from ``seed`` and record (observation, action) rows until success or ``max_steps``."""
    env = PushTEnv(obs_type="state", render_size=IMG_SIZE)
    expert = PushTExpert(config)
    _, info = env.reset(seed=seed)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in DATA_SPEC}
    success = False
    for _ in range(max_steps):
        sim = env.sim
        # Round the action to float32 before stepping, so stored actions replay exactly.
        action = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"]).astype(np.float32)
        rows["img"].append(env.observation_image())
        rows["state"].append(sim.state().astype(np.float32))
        rows["action"].append(action)
        rows["keypoint"].append(block_keypoints(sim.block_pose).astype(np.float32))
        rows["n_contacts"].append(np.array([info["n_contacts"]], dtype=np.float32))
        _, _, terminated, _, info = env.step(action.astype(np.float64))
        if terminated:
            success = True
            break
    data = {k: np.stack(v).astype(DATA_SPEC[k][1]) for k, v in rows.items()}
    return Episode(seed=seed, success=success, data=data)


def replay_states(seed: int, actions: np.ndarray) -> np.ndarray:
    """States ``[ax, ay, bx, by, angle]`` seen before each action when replaying ``actions`` from ``seed``."""
    env = PushTEnv(obs_type="state")
    env.reset(seed=seed)
    states = []
    for action in np.asarray(actions):
        states.append(env.sim.state())
        env.step(np.asarray(action, dtype=np.float64))
    return np.array(states).reshape(-1, 5)


def _record_task(args: tuple[int, int, ExpertConfig | None]) -> Episode:
    return record_episode(*args)


def _episodes(seeds: list[int], max_steps: int, workers: int, config: ExpertConfig | None) -> Iterator[Episode]:
    """Recorded episodes in seed order, from ``workers`` processes (or inline for one worker)."""
    tasks = [(s, max_steps, config) for s in seeds]
    if workers <= 1:
        for task in tasks:
            yield _record_task(task)
        return
    # spawn: safe whatever threads the caller runs (zarr, torch), and the same on every platform.
    with mp.get_context("spawn").Pool(processes=workers) as pool:
        yield from pool.imap(_record_task, tasks, chunksize=1)


class _ReplayBufferWriter:
    """Appends episodes to a zarr format-2 replay buffer."""

    def __init__(self, path: Path) -> None:
        self.root = zarr.open_group(str(path), mode="w", zarr_format=2)
        data = self.root.require_group("data")
        self.root.require_group("meta")
        self.arrays = {}
        for name, (shape, dtype) in DATA_SPEC.items():
            is_img = name == "img"
            self.arrays[name] = data.create_array(
                name,
                shape=(0, *shape),
                chunks=(1, *shape) if is_img else (_LOWDIM_CHUNK, *shape),
                dtype=dtype,
                compressors=_IMG_COMPRESSOR if is_img else None,
            )
        self.n_frames = 0
        self.ends: list[int] = []
        self.seeds: list[int] = []
        self.success: list[bool] = []

    def add(self, episode: Episode) -> None:
        n = episode.length
        for name, arr in self.arrays.items():
            arr.resize((self.n_frames + n, *arr.shape[1:]))
            arr[self.n_frames : self.n_frames + n] = episode.data[name]
        self.n_frames += n
        self.ends.append(self.n_frames)
        self.seeds.append(episode.seed)
        self.success.append(episode.success)

    def close(self) -> None:
        meta = self.root["meta"]
        for name, values, dtype in (
            ("episode_ends", self.ends, np.int64),
            ("episode_seeds", self.seeds, np.int64),
            ("episode_success", self.success, bool),
        ):
            arr = meta.create_array(
                name, shape=(len(values),), chunks=(max(1, len(values)),), dtype=dtype, compressors=None
            )
            if values:
                arr[:] = np.asarray(values, dtype=dtype)
        self.root.attrs.update({"generator": "envs.pusht.demos", "env": "fibpolicy/PushT-v0", "legacy": True})


def generate_demos(
    out: str | os.PathLike,
    episodes: int,
    seed_start: int = 0,
    workers: int = 1,
    keep_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_steps: int = MAX_EPISODE_STEPS,
    config: ExpertConfig | None = None,
) -> dict[str, Any]:
    """Record ``episodes`` expert episodes from seeds ``seed_start, seed_start + 1, …`` into a zarr replay buffer.

    Only successful episodes are written unless ``keep_failed``. The store is written to a temporary
    directory next to ``out`` and renamed when complete; an existing ``out`` is replaced only with
    ``overwrite``. Returns a summary (episodes, success rate, mean length, frames, seconds, path).
    """
    out = Path(out)
    if episodes < 1:
        raise ValueError(f"generate_demos: episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"generate_demos: workers must be >= 1, got {workers}")
    if max_steps < 1:
        raise ValueError(f"generate_demos: max_steps must be >= 1, got {max_steps}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)

    start = time.perf_counter()
    seeds = list(range(seed_start, seed_start + episodes))
    writer = _ReplayBufferWriter(tmp)
    lengths, n_success = [], 0
    bar = tqdm(total=episodes, desc="PushT demos", unit="ep", disable=not progress, file=sys.stderr)
    try:
        for ep in _episodes(seeds, max_steps, workers, config):
            lengths.append(ep.length)
            n_success += ep.success
            if ep.success or keep_failed:
                writer.add(ep)
            bar.update(1)
            bar.set_postfix(success=f"{n_success / len(lengths):.0%}", frames=writer.n_frames)
        writer.close()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    summary = {
        "path": str(out),
        "episodes": episodes,
        "episodes_written": len(writer.ends),
        "successes": n_success,
        "success_rate": n_success / episodes,
        "mean_length": float(np.mean(lengths)),
        "frames": writer.n_frames,
        "seconds": time.perf_counter() - start,
    }
    return summary


def load_episode(path: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """Arrays of episode ``index`` of a replay buffer written by :func:`generate_demos` (plus its seed)."""
    root = zarr.open_group(str(path), mode="r")
    ends = root["meta/episode_ends"][:]
    if not 0 <= index < len(ends):
        raise IndexError(f"{path}: episode {index} out of range; the buffer has {len(ends)} episodes")
    lo = 0 if index == 0 else int(ends[index - 1])
    hi = int(ends[index])
    ep = {name: root[f"data/{name}"][lo:hi] for name in DATA_SPEC}
    ep["seed"] = int(root["meta/episode_seeds"][index])
    return ep


def _format_summary(s: dict[str, Any]) -> str:
    return (
        f"wrote {s['path']}: {s['episodes_written']} of {s['episodes']} episodes, "
        f"success rate {s['success_rate']:.1%}, mean length {s['mean_length']:.1f} steps, "
        f"{s['frames']} frames, {s['seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m envs.pusht.demos", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output zarr directory, e.g. data/pusht_expert.zarr")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes (seeds) to run")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--keep-failed", action="store_true", help="also write episodes that did not succeed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--max-steps", type=int, default=MAX_EPISODE_STEPS, help="step limit per episode (default 300)")
    args = p.parse_args(argv)
    try:
        summary = generate_demos(
            args.out,
            args.episodes,
            seed_start=args.seed_start,
            workers=args.workers,
            keep_failed=args.keep_failed,
            overwrite=args.overwrite,
            max_steps=args.max_steps,
        )
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
