"""PushT rendering: pygame-exact rasterisation, the fast drawing path, reference frames and keypoints."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from envs.pusht import PushTEnv, block_keypoints, local_keypoints, raster
from envs.pusht import geometry as geo
from envs.pusht import render as rd

DATA = Path(__file__).parent / "data"


def _pygame_thick_line(x1, y1, x2, y2, width):
    """pygame 2's draw_line_width loop for an unclipped line, written out step by step."""
    xinc = abs(x1 - x2) <= abs(y1 - y2)
    dx, dy = abs(x2 - x1), abs(y2 - y1)
    sx, sy = (1 if x1 < x2 else -1), (1 if y1 < y2 else -1)
    err = int((dx if dx > dy else -dy) / 2)
    lo, hi = (width - 1) // 2, width // 2
    pixels = set()

    def draw(x, y):
        for o in range(-lo, hi + 1):
            pixels.add((y, x + o) if xinc else (y + o, x))

    def sign(v, d):
        return 1 if v > 0 else (-1 if v < 0 else d)

    x, y = x1, y1
    while sign(x - x2, sx) != sx or sign(y - y2, sy) != sy:
        draw(x, y)
        e2 = err
        if e2 > -dx:
            err -= dy
            x += sx
        if e2 < dy:
            err += dx
            y += sy
    draw(x, y)
    return pixels


def _pixels(spans):
    rows, a, b = spans
    return {(int(r), int(c)) for r, lo, hi in zip(rows, a, b) for c in range(lo, hi + 1)}


def test_closed_form_bresenham_matches_pygame_loop():
    rng = np.random.default_rng(0)
    cases = [(10, 10, 10, 10), (0, 0, 40, 0), (0, 0, 0, 40), (5, 5, 25, 25), (25, 5, 5, 25), (3, 9, 40, 20)]
    cases += [tuple(int(v) for v in rng.integers(0, 200, 4)) for _ in range(300)]
    for x1, y1, x2, y2 in cases:
        expected = _pygame_thick_line(x1, y1, x2, y2, 4)
        assert _pixels(raster.line_width_spans(x1, y1, x2, y2, 4)) == expected, (x1, y1, x2, y2)
        rows, cols, count = raster.thick_lines_pixels(np.array([[x1, y1]]), np.array([[x2, y2]]), 4)
        assert set(zip(rows.tolist(), cols.tolist())) == expected and count[0] == len(rows)


def test_convex_fast_path_matches_general_scanline():
    rng = np.random.default_rng(1)
    for _ in range(200):
        pose = (rng.uniform(-40, 550), rng.uniform(-40, 550), rng.uniform(-7, 7))
        for part in geo.tee_world(pose, draw_order=True):
            xs, ys = raster.round_points(part)
            general = _pixels(raster.fillpoly_spans(np.append(xs, xs[0]), np.append(ys, ys[0])))
            top, left, right = raster.convex_rows(xs[None], ys[None])
            fast = {(int(top[0]) + i, c) for i in range(left.shape[1]) for c in range(left[0, i], right[0, i] + 1)}
            assert fast == general


def _slow_scene(block_pose, agent_pos):
    """The scene painted primitive by primitive with the general rasteriser, in the reference's order."""
    canvas = np.array(rd.SceneRenderer().background)
    for part in geo.tee_world(block_pose, draw_order=True):
        raster.paint(canvas, raster.closed_polygon_spans(part), rd.BLOCK_FILL_COLOR)
        raster.paint(canvas, raster.merge(raster.polygon_outline_spans(part, 2.0)), rd.BLOCK_COLOR)
    cx, cy = round(agent_pos[0]), round(agent_pos[1])
    raster.paint(canvas, raster.circle_spans(cx, cy, 15), rd.AGENT_COLOR)
    raster.paint(canvas, raster.circle_spans(cx, cy, 11), rd.AGENT_INNER_COLOR)
    for a, b in geo.WALLS:
        for spans in raster.fat_segment_spans(a, b, geo.WALL_RADIUS):
            raster.paint(canvas, spans, rd.WALL_COLOR)
    return canvas


def test_fast_renderer_matches_primitive_painter():
    rng = np.random.default_rng(2)
    renderer = rd.SceneRenderer()
    for i in range(60):
        pose = np.array([rng.uniform(-30, 540), rng.uniform(-30, 540), rng.uniform(-7, 7)])
        if i % 6 == 0:
            pose[2] = rng.integers(-8, 8) * math.pi / 4  # axis-aligned and diagonal edges
        agent = rng.uniform(-20, 530, 2)
        np.testing.assert_array_equal(renderer.draw(pose, agent), _slow_scene(pose, agent))


@pytest.mark.parametrize(
    "name, state, actions",
    [
        # A block partly off the canvas (its edges are clipped the way pygame clips) under the walls.
        ("static", [400.0, 120.0, 40.0, 300.0, 1.2], []),
        # The agent pushing the stem: pymunk's red contact marks are part of the frame.
        ("contact", [256.0, 420.0, 250.0, 260.0, 0.3], [[256.0, 420.0 - 12.0 * k] for k in range(1, 13)]),
    ],
)
def test_frames_match_reference_drawn_by_pygame(name, state, actions):
    """``tests/data/pusht_reference_*.png`` are 512 x 512 frames drawn by gym-pusht 0.1.8 (pygame 2.6.1,
    pymunk 6.11.1) with ``reset(options={"reset_to_state": state})`` and these actions."""
    env = PushTEnv(obs_type="state")
    env.reset(options={"reset_to_state": state})
    for a in actions:
        env.step(a)
    if name == "contact":
        assert env.sim.contacts
    reference = cv2.imread(str(DATA / f"pusht_reference_{name}.png"))[..., ::-1]
    frame = env._canvas()
    assert (frame != reference).any(axis=-1).sum() == 0
    np.testing.assert_array_equal(
        env.observation_image(), cv2.resize(reference, (96, 96), interpolation=cv2.INTER_LINEAR)
    )


def test_colours_follow_the_reference():
    assert rd.BLOCK_FILL_COLOR == (143, 163, 184)  # LightSlateGray x 1.2, rounded like pymunk's as_int
    assert rd.AGENT_INNER_COLOR == (78, 126, 255)  # RoyalBlue x 1.2, clipped at 255
    bg = rd.SceneRenderer().background
    assert tuple(bg[256, 256]) == rd.GOAL_COLOR and tuple(bg[0, 0]) == (255, 255, 255)
    assert tuple(bg[256, 5]) == rd.WALL_COLOR and tuple(bg[256, 9]) == (255, 255, 255)


def test_local_keypoints_are_the_references():
    """Values from the reference procedure (farthest-point sampling over the T drawn by pygame at
    (256, 300, 0), ``default_rng(0)``), run with gym-pusht's drawing code."""
    expected = np.array(
        [
            [9.26978671, 90.04097352],
            [-60.98347236, -1.18672976],
            [60.91275558, -1.39336422],
            [-0.27050344, 25.54362499],
            [-14.06492758, 122.81585355],
            [39.0027385, 32.85740428],
            [-39.96641442, 32.72965545],
            [-16.82434438, 62.86317892],
            [23.54146122, -1.70028811],
        ]
    )
    np.testing.assert_allclose(local_keypoints(), expected, atol=1e-7)


def test_block_keypoints_move_with_the_block():
    pose = np.array([200.0, 150.0, 0.7])
    kp = block_keypoints(pose)
    c, s = math.cos(0.7), math.sin(0.7)
    np.testing.assert_allclose(kp, local_keypoints() @ np.array([[c, s], [-s, c]]) + pose[:2], atol=1e-9)
