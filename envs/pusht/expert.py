"""A scripted PushT expert: greedy, simulation-checked pushes with human-like agent motion.

Each cycle the expert (1) lists candidate pushes — a contact point on one of the T's eight outer
edges, pushed straight along the edge's inward normal at one of two speeds; (2) rolls every
candidate out on a scratch copy of the simulator (the physics is deterministic and cheap) and scores
it by how much it brings the block's vertices toward the goal T's per step spent travelling and
pushing; (3) walks the agent to the chosen push's start point around the block (a shortest path
around the block's inflated convex hull, followed with a short look-ahead so the target never runs
far ahead of the agent); (4) pushes; (5) backs off and plans again. Because every executed push was
checked in simulation, the block's distance to the goal shrinks almost every cycle.

The motion resembles teleoperation: the target leads the agent like a cursor (never more than 40 px
ahead), speeds are bounded, and the agent walks around the block rather than through it.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import math
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon
from tqdm import tqdm

from envs.pusht import geometry as geo
from envs.pusht.sim import PushTSim

# The T's outline in body coordinates: each outer edge with its outward normal.
_EDGES = (
    ((-60.0, 0.0), (60.0, 0.0), (0.0, -1.0)),  # top of the bar
    ((60.0, 0.0), (60.0, 30.0), (1.0, 0.0)),  # right end of the bar
    ((60.0, 30.0), (15.0, 30.0), (0.0, 1.0)),  # underside of the bar, right
    ((15.0, 30.0), (15.0, 120.0), (1.0, 0.0)),  # right side of the stem
    ((15.0, 120.0), (-15.0, 120.0), (0.0, 1.0)),  # bottom of the stem
    ((-15.0, 120.0), (-15.0, 30.0), (-1.0, 0.0)),  # left side of the stem
    ((-15.0, 30.0), (-60.0, 30.0), (0.0, 1.0)),  # underside of the bar, left
    ((-60.0, 30.0), (-60.0, 0.0), (-1.0, 0.0)),  # left end of the bar
)
_VERTS = geo.TEE_PARTS.reshape(-1, 2)  # the 8 part vertices, for the pose error
_HULL_LOCAL = np.array([(-60.0, 0.0), (60.0, 0.0), (60.0, 30.0), (15.0, 120.0), (-15.0, 120.0), (-60.0, 30.0)])
_TEE_LOCAL = shapely.union(Polygon(geo.BAR), Polygon(geo.STEM))


@dataclass(frozen=True)
class ExpertConfig:
    """Tunable parameters of :class:`PushTExpert` (distances in workspace pixels, times in env steps)."""

    contact_spacing: float = 10.0  # distance between candidate contact points along an edge
    corner_margin: float = 3.0  # keep contact points this far from an edge's ends
    gap: float = 2.0  # free space between agent and block when a push starts
    push_speeds: tuple[tuple[float, int], ...] = ((10.0, 10), (2.5, 4))  # (px per step, max steps)
    lookahead: float = 35.0  # how far ahead of the agent the target leads along a path
    clearance: float = 10.0  # extra distance kept from the block while walking around it
    retreat: float = 6.0  # how far the agent backs off after a push
    max_target_offset: float = 40.0  # never put the target farther than this from the agent
    nav_speed: float = 16.0  # expected walking speed, px per step, to price candidates
    min_gain: float = 0.02  # a push must reduce the pose error by at least this much (px)
    arrive_tol: float = 3.0  # a push starts once the agent is this close to its start point
    max_nav_steps: int = 60  # give up on a walk that takes longer than this and plan again


_GOAL_VERTS = geo.to_world(_VERTS, geo.GOAL_POSE)


def pose_error(pose: np.ndarray) -> float:
    """Mean distance (px) between the block's part vertices and the goal T's."""
    return float(np.linalg.norm(geo.to_world(_VERTS, pose) - _GOAL_VERTS, axis=1).mean())


@dataclass
class _Push:
    start: np.ndarray  # agent position where the push starts (world)
    normal: np.ndarray  # outward normal of the pushed edge (world); the push goes along -normal
    speed: float
    steps: int
    gain: float


class PushTExpert:
    """Scripted expert; call :meth:`reset` at each episode start, then :meth:`act` every step."""

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.cfg = config or ExpertConfig()
        self._contacts = self._contact_candidates()
        self.reset()

    def reset(self) -> None:
        """Forget the current plan (call at the start of every episode)."""
        self._mode = "plan"
        self._push: _Push | None = None
        self._path: np.ndarray | None = None
        self._step_in_mode = 0
        self._pose_at_plan: np.ndarray | None = None

    # -- public API ----------------------------------------------------------------------------

    def act(self, agent_pos: np.ndarray, agent_vel: np.ndarray, block_pose: np.ndarray) -> np.ndarray:
        """The next target position for the agent, given the current agent and block state."""
        agent_pos = np.asarray(agent_pos, dtype=np.float64)
        agent_vel = np.asarray(agent_vel, dtype=np.float64)
        block_pose = np.asarray(block_pose, dtype=np.float64)
        target = None
        for _ in range(3):  # a mode may hand over to the next one within the same step
            if self._mode == "plan":
                self._plan(agent_pos, block_pose)
            if self._mode == "navigate":
                target = self._navigate(agent_pos, agent_vel, block_pose)
            elif self._mode == "push":
                target = self._push_target(agent_pos)
            elif self._mode == "retreat":
                target = self._retreat_target(agent_pos)
            elif self._mode == "hold":
                self._mode = "plan"  # look again next step
                break
            if target is not None:
                break
        if target is None:  # nothing useful to do: hold still
            target = agent_pos.copy()
        offset = target - agent_pos
        dist = float(np.linalg.norm(offset))
        if dist > self.cfg.max_target_offset:
            target = agent_pos + offset * (self.cfg.max_target_offset / dist)
        return np.clip(target, 0.0, float(geo.WINDOW_SIZE))

    # -- planning ------------------------------------------------------------------------------

    def _contact_candidates(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Contact points (body frame) with outward normals, spread along the T's outer edges."""
        out = []
        cfg = self.cfg
        for a, b, n in _EDGES:
            a, b, n = np.array(a), np.array(b), np.array(n)
            length = float(np.linalg.norm(b - a))
            usable = length - 2 * cfg.corner_margin
            count = max(1, int(usable // cfg.contact_spacing) + 1)
            for t in np.linspace(cfg.corner_margin, length - cfg.corner_margin, count):
                out.append((a + (b - a) * (t / length), n))
        return out

    def _feasible_start(self, start_local: np.ndarray) -> bool:
        """A push may start there if the agent disc fits beside the T (not inside the bar/stem corners)."""
        return _TEE_LOCAL.distance(Point(start_local)) >= geo.AGENT_RADIUS + self.cfg.gap - 0.25

    def _plan(self, agent_pos: np.ndarray, block_pose: np.ndarray) -> None:
        """Choose the push with the best error reduction per step, and the path to its start."""
        cfg = self.cfg
        err0 = pose_error(block_pose)
        c, s = math.cos(block_pose[2]), math.sin(block_pose[2])
        rot = np.array([[c, -s], [s, c]])
        best: tuple[float, _Push] | None = None
        nudge: tuple[float, _Push] | None = None  # the least harmful push, should none help
        lo, hi = geo.AGENT_RADIUS, geo.WINDOW_SIZE - geo.AGENT_RADIUS
        for point, normal in self._contacts:
            start_local = point + normal * (geo.AGENT_RADIUS + cfg.gap)
            if not self._feasible_start(start_local):
                continue
            start = rot @ start_local + block_pose[:2]
            if not (lo <= start[0] <= hi and lo <= start[1] <= hi):
                continue
            n_world = rot @ normal
            nav = self._travel_estimate(agent_pos, start, block_pose)
            for speed, max_steps in cfg.push_speeds:
                errors = self._rollout(start, n_world, speed, max_steps, block_pose)
                for j, err in enumerate(errors, start=1):
                    gain = err0 - err
                    if nudge is None or gain > nudge[0]:
                        nudge = (gain, _Push(start, n_world, speed, j, gain))
                    if gain < cfg.min_gain:
                        continue
                    score = gain / (nav + j + 2.0)
                    if best is None or score > best[0]:
                        best = (score, _Push(start, n_world, speed, j, gain))
        self._pose_at_plan = block_pose.copy()
        self._step_in_mode = 0
        # At a local minimum of the error no push helps; the least harmful one moves the block out of it.
        chosen = best or nudge
        if chosen is None:  # no push can start anywhere (block wedged in a corner): hold still
            self._mode, self._push = "hold", None
            return
        self._push = chosen[1]
        self._path = self._find_path(agent_pos, self._push.start, self._push.normal, block_pose)
        self._mode = "navigate"

    def _rollout(
        self, start: np.ndarray, n_world: np.ndarray, speed: float, steps: int, block_pose: np.ndarray
    ) -> list[float]:
        """Pose error after each step of a push simulated from rest at ``start``."""
        sim = PushTSim()
        sim.place(start, (0.0, 0.0), block_pose)
        errors = []
        for j in range(1, steps + 1):
            sim.step(start - n_world * (self.cfg.gap + speed * j))
            errors.append(pose_error(sim.block_pose))
        return errors

    def _travel_estimate(self, agent_pos: np.ndarray, start: np.ndarray, block_pose: np.ndarray) -> float:
        """Rough number of steps to walk from the agent to a push start (detour priced by a fixed penalty)."""
        dist = float(np.linalg.norm(start - agent_pos))
        if dist < 3.0:
            return 0.0
        centre = geo.to_world(np.array([0.0, 50.0]), block_pose)
        # A straight walk that passes near the block's centre has to go around it.
        seg = start - agent_pos
        t = np.clip(np.dot(centre - agent_pos, seg) / max(np.dot(seg, seg), 1e-9), 0.0, 1.0)
        detour = 60.0 if np.linalg.norm(agent_pos + t * seg - centre) < 60.0 else 0.0
        return (dist + detour) / self.cfg.nav_speed + 2.0

    # -- walking around the block --------------------------------------------------------------

    def _find_path(
        self, agent_pos: np.ndarray, start: np.ndarray, normal: np.ndarray, block_pose: np.ndarray
    ) -> np.ndarray:
        """Waypoints from the agent to the push start that keep the agent disc off the block."""
        cfg = self.cfg
        hull = Polygon(geo.to_world(_HULL_LOCAL, block_pose))
        ring = hull.buffer(geo.AGENT_RADIUS + cfg.clearance, quad_segs=3)
        solid = hull.buffer(geo.AGENT_RADIUS + cfg.clearance - 1.0, quad_segs=3)
        # Leave / enter the hull's neighbourhood straight along the pushed edge's normal (the corridor
        # in front of an edge is free), so pockets between bar and stem are reachable.
        entry = self._exit_point(start, normal, ring)
        head = [agent_pos]
        if ring.contains(Point(agent_pos)):
            tee = Polygon(geo.to_world(geo.BAR, block_pose)).union(Polygon(geo.to_world(geo.STEM, block_pose)))
            near = np.array(shapely.shortest_line(tee, Point(agent_pos)).coords[0])
            away = agent_pos - near
            norm = float(np.linalg.norm(away))
            away = away / norm if norm > 1e-6 else agent_pos - geo.to_world(np.array([0.0, 50.0]), block_pose)
            away = away / max(float(np.linalg.norm(away)), 1e-9)
            head.append(self._exit_point(agent_pos, away, ring))
        middle = self._around(head[-1], entry, ring, solid)
        pts = head + middle[1:-1] + [entry, start]
        # Drop repeated points so path parameterisation stays well defined.
        path = [pts[0]]
        for p in pts[1:]:
            if np.linalg.norm(p - path[-1]) > 1e-6:
                path.append(p)
        return np.array(path)

    @staticmethod
    def _exit_point(origin: np.ndarray, direction: np.ndarray, ring: Polygon) -> np.ndarray:
        """First point along ``direction`` from ``origin`` that lies outside ``ring`` (plus 1 px)."""
        if not ring.contains(Point(origin)):
            return origin.copy()
        far = origin + direction * 400.0
        inter = LineString([origin, far]).intersection(ring.exterior)
        pts = np.array([c for g in getattr(inter, "geoms", [inter]) for c in g.coords]) if not inter.is_empty else None
        if pts is None or len(pts) == 0:
            return far
        d = np.linalg.norm(pts - origin, axis=1)
        return pts[np.argmin(d)] + direction * 1.0

    @staticmethod
    def _around(a: np.ndarray, b: np.ndarray, ring: Polygon, solid: Polygon) -> list[np.ndarray]:
        """Shortest polyline from ``a`` to ``b`` (both outside ``ring``) that stays outside ``solid``."""
        if not LineString([a, b]).intersects(solid):
            return [a, b]
        nodes = [a, b] + [np.array(p) for p in ring.exterior.coords[:-1]]
        pts = np.array(nodes)
        n = len(nodes)
        ii, jj = np.triu_indices(n, k=1)
        segs = shapely.linestrings(np.stack([pts[ii], pts[jj]], axis=1))
        free = ~shapely.intersects(segs, solid)
        adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for i, j, ok in zip(ii, jj, free):
            if ok:
                d = float(np.linalg.norm(pts[i] - pts[j]))
                adj[i].append((j, d))
                adj[j].append((i, d))
        dist = [math.inf] * n
        prev = [-1] * n
        dist[0] = 0.0
        heap = [(0.0, 0)]
        while heap:
            d, i = heapq.heappop(heap)
            if d > dist[i]:
                continue
            if i == 1:
                break
            for j, w in adj[i]:
                if d + w < dist[j]:
                    dist[j], prev[j] = d + w, i
                    heapq.heappush(heap, (d + w, j))
        if math.isinf(dist[1]):
            return [a, b]
        route = [1]
        while route[-1] != 0:
            route.append(prev[route[-1]])
        return [pts[i] for i in reversed(route)]

    def _navigate(self, agent_pos: np.ndarray, agent_vel: np.ndarray, block_pose: np.ndarray) -> np.ndarray | None:
        push, path = self._push, self._path
        self._step_in_mode += 1
        moved = np.abs(block_pose - self._pose_at_plan)
        if moved[0] > 0.5 or moved[1] > 0.5 or moved[2] > 0.01 or self._step_in_mode > self.cfg.max_nav_steps:
            self._mode = "plan"  # the block was bumped, or the walk is taking too long
            return None
        if np.linalg.norm(agent_pos - push.start) < self.cfg.arrive_tol and np.linalg.norm(agent_vel) < 40.0:
            self._mode, self._step_in_mode = "push", 0
            return None
        return _point_ahead(path, agent_pos, self.cfg.lookahead)

    def _push_target(self, agent_pos: np.ndarray) -> np.ndarray | None:
        push = self._push
        self._step_in_mode += 1
        if self._step_in_mode > push.steps:
            self._mode, self._step_in_mode = "retreat", 0
            return None
        return push.start - push.normal * (self.cfg.gap + push.speed * self._step_in_mode)

    def _retreat_target(self, agent_pos: np.ndarray) -> np.ndarray | None:
        self._step_in_mode += 1
        if self._step_in_mode > 1:
            self._mode = "plan"
            return None
        return agent_pos + self._push.normal * self.cfg.retreat


def _point_ahead(path: np.ndarray, pos: np.ndarray, lookahead: float) -> np.ndarray:
    """The point ``lookahead`` further along ``path`` than the point of the path closest to ``pos``."""
    seg_a, seg_b = path[:-1], path[1:]
    d = seg_b - seg_a
    lengths = np.linalg.norm(d, axis=1)
    t = np.clip(np.einsum("ij,ij->i", pos - seg_a, d) / np.maximum(lengths**2, 1e-12), 0.0, 1.0)
    closest = seg_a + d * t[:, None]
    i = int(np.argmin(np.linalg.norm(closest - pos, axis=1)))
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    s = cum[i] + t[i] * lengths[i] + lookahead
    if s >= cum[-1]:
        return path[-1].copy()
    k = int(np.searchsorted(cum, s, side="right") - 1)
    return path[k] + d[k] * ((s - cum[k]) / max(lengths[k], 1e-12))


def run_expert_episode(seed: int, max_steps: int = 300, config: ExpertConfig | None = None) -> dict[str, float]:
    """Run the expert from ``seed`` (state observations); returns success, steps, max coverage and seconds."""
    from envs.pusht.env import PushTEnv  # here, not at import time: env imports nothing from the expert

    start = time.perf_counter()
    env = PushTEnv(obs_type="state")
    expert = PushTExpert(config)
    _, info = env.reset(seed=seed)
    best, steps, success = info["coverage"], 0, False
    while steps < max_steps and not success:
        action = expert.act(info["agent_pos"], info["agent_vel"], info["block_pose"])
        _, _, success, _, info = env.step(action)
        best = max(best, info["coverage"])
        steps += 1
    return {
        "seed": seed,
        "success": bool(success),
        "steps": steps,
        "max_coverage": best,
        "seconds": time.perf_counter() - start,
    }


def evaluate_expert(
    seeds: Sequence[int], workers: int = 1, progress: bool = True, max_steps: int = 300
) -> dict[str, Any]:
    """Success rate of the expert over ``seeds`` (coverage > 0.95 within ``max_steps``), with per-seed results."""
    tasks = list(seeds)
    results = []
    bar = tqdm(total=len(tasks), desc="PushT expert", unit="ep", disable=not progress, file=sys.stderr)
    if workers <= 1:
        it = (run_expert_episode(s, max_steps) for s in tasks)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(processes=workers)
        it = pool.imap(functools.partial(run_expert_episode, max_steps=max_steps), tasks)
    try:
        for r in it:
            results.append(r)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([x['success'] for x in results]):.1%}")
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    ok = [r for r in results if r["success"]]
    return {
        "episodes": len(results),
        "success_rate": len(ok) / max(1, len(results)),
        "mean_steps_success": float(np.mean([r["steps"] for r in ok])) if ok else float("nan"),
        "mean_seconds": float(np.mean([r["seconds"] for r in results])) if results else float("nan"),
        "failed_seeds": [r["seed"] for r in results if not r["success"]],
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m envs.pusht.expert --seeds 0:200``: measure the expert's success rate."""
    p = argparse.ArgumentParser(prog="python -m envs.pusht.expert", description=main.__doc__)
    p.add_argument("--seeds", default="0:200", help="seed range start:stop (default 0:200)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--max-steps", type=int, default=300, help="step limit per episode (default 300)")
    args = p.parse_args(argv)
    try:
        lo, hi = (int(v) for v in args.seeds.split(":"))
    except ValueError:
        print(f"error: --seeds must look like start:stop, got {args.seeds!r}", file=sys.stderr)
        return 2
    s = evaluate_expert(range(lo, hi), workers=args.workers, max_steps=args.max_steps)
    n_ok = s["episodes"] - len(s["failed_seeds"])
    print(
        f"seeds {lo}-{hi - 1}: success {s['success_rate']:.1%} ({n_ok}/{s['episodes']}), "
        f"mean length of successes {s['mean_steps_success']:.1f} steps, {s['mean_seconds']:.2f} s per episode; "
        f"failed seeds: {s['failed_seeds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
