"""Vectorised policy evaluation: vector environments, observation stacking, chunked actions, videos.

Episodes run in rounds of ``n_envs`` on a gymnasium ``AsyncVectorEnv`` (``vector_env="async"``: one
subprocess per env, for simulators that are slow or hold a GL context) or a ``SyncVectorEnv``
(``"sync"``: every env in this process, for envs whose step costs less than the pipe round trip, such
as PushT; a large ``n_envs`` then runs a whole protocol as one batch of policy calls).
The policy is reset at the start of each round and asked for one action per env step through
``select_action(obs)``; its own time window decides how many observations it stacks and how many
actions of a predicted chunk it executes. Each round runs up to ``max_steps``. An episode's score is its maximum reward; it succeeds when any step reports
``info["is_success"]``. An env that terminates keeps being stepped with the batch but its results are
ignored. A worker that raises or dies is reported with its episode's seed; the rest of its round is
run again in a fresh set of workers, so one bad episode neither hangs nor sinks the evaluation (an
in-process env that raises fails its whole round, reported with the round's seeds). An episode may carry
reset options (a stored start state) instead of relying on its seed alone, and ``action_map`` turns the
policy's actions into the env's (e.g. rotation-6d into axis-angle). The result says where the time went
(policy calls, env steps with IPC, filming) and how much memory each subprocess env holds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.mp4 import write_mp4

ObsTransform = Callable[[Any], dict[str, np.ndarray]]
VECTOR_ENVS = ("async", "sync")


@dataclass(frozen=True)
class EpisodeSpec:
    """One evaluation episode: its reset seed, which split it reports to, and whether to film it."""

    seed: int
    prefix: str = "test"
    record_video: bool = False
    # Reset options for this episode instead of its seed alone, e.g. ``{"state": flat_state}`` to start
    # from a demonstration's first state (the reference's train inits on robomimic).
    options: Mapping[str, Any] | None = None


@dataclass
class EpisodeResult:
    """What one episode produced."""

    seed: int
    prefix: str
    score: float = 0.0
    success: bool = False
    length: int = 0
    video: str | None = None
    error: str | None = None


@dataclass
class RolloutResult:
    """Per-episode results and their aggregates per split (``train/…``, ``test/…``)."""

    episodes: list[EpisodeResult] = field(default_factory=list)
    seconds: float = 0.0
    # Where ``seconds`` went: policy calls (observation transform included), env resets and steps (with
    # the pipe round trips of subprocess envs), rendering and encoding videos.
    timing: dict[str, float] = field(default_factory=dict)
    # Memory of the env worker processes (subprocess envs only), MB, mean and max over workers: resident
    # (RSS, shared libraries included) and unique (USS, what one more worker costs).
    memory: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``<prefix>/mean_score``, ``<prefix>/success_rate`` and ``<prefix>/n_episodes`` for each split."""
        out: dict[str, float] = {}
        for prefix in sorted({e.prefix for e in self.episodes}):
            done = [e for e in self.episodes if e.prefix == prefix and e.error is None]
            failed = [e for e in self.episodes if e.prefix == prefix and e.error is not None]
            out[f"{prefix}/mean_score"] = float(np.mean([e.score for e in done])) if done else float("nan")
            out[f"{prefix}/success_rate"] = float(np.mean([e.success for e in done])) if done else float("nan")
            out[f"{prefix}/n_episodes"] = len(done)
            if failed:
                out[f"{prefix}/n_crashed"] = len(failed)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with every episode."""
        return {**self.metrics(), "seconds": self.seconds, "timing": dict(self.timing), "memory": dict(self.memory),
                "episodes": [asdict(e) for e in self.episodes]}


class Filmable(gym.Wrapper):
    """An env that renders a video frame on ``film()`` only while ``filming`` is set.

    A vector ``call("render")`` renders every subprocess env; with this wrapper the runner marks the
    envs it films (``set_attr``, one value per env) and the others answer ``film()`` with None at no cost.
    """

    filming: bool = False

    def film(self) -> np.ndarray | None:
        """The env's ``render()`` while it is filmed, else None."""
        return self.env.render() if self.filming else None


@dataclass(frozen=True)
class _FilmableEnvFn:
    """``env_fn`` with its env wrapped in :class:`Filmable` (a picklable callable for the workers)."""

    env_fn: Callable[[], gym.Env]

    def __call__(self) -> Filmable:
        return Filmable(self.env_fn())


def _failed_workers(venv: gym.vector.AsyncVectorEnv, wait_s: float = 5.0) -> list[int]:
    """Indices of workers that raised (gymnasium drops their pipe) or whose process died."""
    raised = [i for i, pipe in enumerate(getattr(venv, "parent_pipes", [])) if pipe is None]
    if raised:
        return raised
    # A dead worker's pipe reports EOF before the process is reaped: give it a moment to show up.
    procs = getattr(venv, "processes", [])
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        dead = [i for i, proc in enumerate(procs) if not proc.is_alive()]
        if dead:
            return dead
        time.sleep(0.05)
    return []


class RolloutRunner:
    """Evaluates a policy with ``reset()`` and ``select_action(obs) -> (B, A)`` on a list of episodes.

    ``obs_transform`` maps a batch of env observations to the policy's observation dict (numpy arrays).
    """

    def __init__(
        self,
        env_fn: Callable[[], gym.Env],
        episodes: Sequence[EpisodeSpec],
        *,
        obs_transform: ObsTransform,
        action_map: Callable[[np.ndarray], np.ndarray] | None = None,
        n_envs: int = 8,
        max_steps: int = 300,
        video_dir: str | Path | None = None,
        fps: int = 10,
        vector_env: str = "async",
        context: str = "spawn",
        step_timeout_s: float | None = 120.0,
        progress: bool = True,
        keep_workers: bool = False,
    ) -> None:
        if n_envs < 1 or max_steps < 1:
            raise ValueError(f"n_envs and max_steps must be >= 1, got {n_envs} and {max_steps}")
        if vector_env not in VECTOR_ENVS:
            raise ValueError(f"vector_env must be one of {VECTOR_ENVS}, got {vector_env!r}")
        if not episodes:
            raise ValueError("no episodes to run")
        self.env_fn, self.episodes, self.obs_transform = env_fn, list(episodes), obs_transform
        self.action_map = action_map
        self.n_envs = min(n_envs, len(self.episodes))
        self.max_steps = max_steps
        self.video_dir = Path(video_dir) if video_dir is not None else None
        self.fps, self.context, self.step_timeout_s, self.progress = fps, context, step_timeout_s, progress
        self.vector_env = vector_env
        # Subprocess envs kept alive between runs (``close()`` ends them): starting a worker that imports
        # a simulator stack costs seconds of CPU each, once per run otherwise.
        self.keep_workers = keep_workers
        self._venv: gym.vector.VectorEnv | None = None
        self._timing: dict[str, float] = {}

    def _vector_env(self) -> gym.vector.VectorEnv:
        if self.vector_env == "sync":
            # SyncVectorEnv refuses to step a terminated env when autoreset is disabled; resetting it on its
            # next step instead is harmless, since the runner ignores an env once its episode has ended.
            return gym.vector.SyncVectorEnv([self.env_fn] * self.n_envs, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        return gym.vector.AsyncVectorEnv(
            [_FilmableEnvFn(self.env_fn)] * self.n_envs, context=self.context,
            autoreset_mode=gym.vector.AutoresetMode.DISABLED,
        )

    def _timed(self, phase: str, start: float) -> None:
        self._timing[phase] = self._timing.get(phase, 0.0) + time.perf_counter() - start

    @torch.no_grad()
    def run(self, policy: Any, *, tag: str = "") -> RolloutResult:
        """Run every episode with ``policy``; videos go to ``video_dir/<tag><prefix>_seed<seed>.mp4``."""
        start = time.time()
        self._timing = {"policy_s": 0.0, "env_s": 0.0, "video_s": 0.0}
        self._memory: list[dict[str, float]] = []
        self._measured: set[int] = set()
        results: dict[int, EpisodeResult] = {}
        pending = list(range(len(self.episodes)))
        bar = tqdm(total=len(pending), desc="rollouts", leave=False, disable=not self.progress)
        venv = self._venv if self._venv is not None else self._vector_env()
        self._venv = None
        completed = False
        try:
            while pending:
                batch, pending = pending[: self.n_envs], pending[self.n_envs :]
                try:
                    for idx, res in zip(batch, self._run_round(venv, policy, [self.episodes[i] for i in batch], tag)):
                        results[idx] = res
                    bar.update(len(batch))
                except Exception as err:  # a worker raised or died: report it, retry the rest
                    failed = self._failed(venv, len(batch))
                    for i in failed:
                        spec = self.episodes[batch[i]]
                        results[batch[i]] = EpisodeResult(spec.seed, spec.prefix, error=f"{type(err).__name__}: {err}")
                    bar.update(len(failed))
                    pending = [idx for i, idx in enumerate(batch) if i not in failed] + pending
                    venv.close(terminate=True)
                    venv = self._vector_env()
            completed = True
        finally:
            if completed and self.keep_workers:
                self._venv = venv
            else:
                venv.close(terminate=True)
            bar.close()
        memory = {f"env_{kind}_mb_{stat}": float(fn([m[kind] for m in self._memory]))
                  for kind in ("rss", "uss") for stat, fn in (("mean", np.mean), ("max", np.max))} if self._memory else {}
        return RolloutResult([results[i] for i in range(len(self.episodes))], time.time() - start, dict(self._timing), memory)

    def close(self) -> None:
        """End the env workers kept by ``keep_workers`` (a later run starts new ones)."""
        if self._venv is not None:
            self._venv.close(terminate=True)
            self._venv = None

    def _failed(self, venv, n: int) -> list[int]:
        if self.vector_env == "sync":  # the exception does not say which in-process env raised
            return list(range(n))
        return [i for i in _failed_workers(venv) if i < n] or list(range(n))

    def _run_round(self, venv, policy, specs: list[EpisodeSpec], tag: str) -> list[EpisodeResult]:
        n = len(specs)
        # Pad a short last round with copies of its first episode; their results are dropped.
        seeds = [s.seed for s in specs] + [specs[0].seed] * (self.n_envs - n)
        tick = time.perf_counter()
        obs = self._reset(venv, seeds, [s.options for s in specs])
        self._timed("env_s", tick)
        self._measure_memory(venv)
        policy.reset()
        filming = [i for i, s in enumerate(specs) if s.record_video and self.video_dir is not None]
        frames: dict[int, list[np.ndarray]] = {i: [] for i in filming}
        self._marked: set[int] | None = None  # the envs told to film (set on the round's first frame)
        self._film(venv, frames)
        results = [EpisodeResult(s.seed, s.prefix) for s in specs]
        done = np.zeros(self.n_envs, dtype=bool)
        done[n:] = True
        steps = 0
        while steps < self.max_steps and not done.all():
            tick = time.perf_counter()
            policy_obs = {k: torch.as_tensor(v) for k, v in self.obs_transform(obs).items()}
            action = policy.select_action(policy_obs).detach().float().cpu().numpy()
            if self.action_map is not None:  # e.g. the policy's rotation-6d actions -> the env's axis-angle
                action = self.action_map(action)
            self._timed("policy_s", tick)
            tick = time.perf_counter()
            if self.vector_env == "sync":
                obs, reward, terminated, truncated, info = venv.step(action)
            else:
                venv.step_async(action)
                obs, reward, terminated, truncated, info = venv.step_wait(timeout=self.step_timeout_s)
            self._timed("env_s", tick)
            steps += 1
            success = info.get("is_success", np.zeros(self.n_envs, dtype=bool))
            for i in np.flatnonzero(~done):
                r = results[i]
                r.score, r.length = max(r.score, float(reward[i])), steps
                r.success = r.success or bool(success[i])
                if terminated[i] or truncated[i]:
                    done[i] = True
            self._film(venv, {i: f for i, f in frames.items() if results[i].length == steps})
        tick = time.perf_counter()
        for i, f in frames.items():
            name = f"{tag}{specs[i].prefix}_seed{specs[i].seed}.mp4"
            results[i].video = str(write_mp4(f, self.video_dir / name, fps=self.fps))
        self._timed("video_s", tick)
        return results

    def _reset(self, venv, seeds: list[int], options: list[Mapping[str, Any] | None]) -> Any:
        """Reset every env from its seed, then each episode with reset options on its own with them."""
        # All of them first: a masked reset of a vector env that was never reset leaves the others' obs unset.
        obs, _ = venv.reset(seed=seeds)
        for i, opts in enumerate(options):
            if opts is None:
                continue
            mask = np.zeros(len(seeds), dtype=bool)
            mask[i] = True
            # gymnasium pops "reset_mask" from the dict it is given: a fresh one for every call.
            obs, _ = venv.reset(seed=seeds, options={**opts, "reset_mask": mask})
        return obs

    def _measure_memory(self, venv) -> None:
        """Memory of each subprocess env, once per run and set of workers (after its first reset).

        RSS counts the shared libraries every worker maps (torch, MuJoCo, GL); USS is what the worker
        alone holds, i.e. what one more env costs.
        """
        if self.vector_env != "async" or id(venv) in self._measured:
            return
        import psutil

        self._measured.add(id(venv))
        for proc in getattr(venv, "processes", []):
            try:
                info = psutil.Process(proc.pid).memory_full_info()
                self._memory.append({"rss": info.rss / 2**20, "uss": info.uss / 2**20})
            except psutil.Error:  # a worker that already died is reported by the round itself
                pass

    def _film(self, venv, frames: dict[int, list[np.ndarray]]) -> None:
        if not frames:
            return
        tick = time.perf_counter()
        if self.vector_env == "sync":
            for i, f in frames.items():
                f.append(np.asarray(venv.envs[i].render()))
        else:
            # Only the envs marked filming render; the others answer None. The marks change when a filmed
            # episode ends, so a finished env stops rendering for the ones still running.
            if set(frames) != self._marked:
                self._marked = set(frames)
                venv.set_attr("filming", [i in self._marked for i in range(self.n_envs)])
            rendered = venv.call("film")
            for i, f in frames.items():
                f.append(np.asarray(rendered[i]))
        self._timed("video_s", tick)


def protocol_episodes(
    n_train: int = 6, n_test: int = 50, *, train_seed_start: int = 0, test_seed_start: int = 100000,
    n_train_videos: int = 1, n_test_videos: int = 2, train_options: Sequence[Mapping[str, Any]] | None = None,
) -> list[EpisodeSpec]:
    """The reference evaluation: train seeds 0-5 and test seeds 100000-100049, a few filmed.

    ``train_options``: reset options of the train episodes, one per episode (robomimic's train inits
    start from the first states of demos 0-5); their seeds then only name them.
    """
    if train_options is not None and len(train_options) < n_train:
        raise ValueError(f"{n_train} train episodes need as many reset options (start states), got {len(train_options)}")
    train = [EpisodeSpec(train_seed_start + i, "train", i < n_train_videos,
                         None if train_options is None else dict(train_options[i])) for i in range(n_train)]
    test = [EpisodeSpec(test_seed_start + i, "test", i < n_test_videos) for i in range(n_test)]
    return train + test
