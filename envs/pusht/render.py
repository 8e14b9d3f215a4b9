"""PushT images, drawn like the reference (pygame through pymunk's debug draw) but with numpy and OpenCV.

Drawing order, as the reference's: white background; goal T (LightGreen); the block's two polygons,
each filled with LightSlateGray x 1.2 and outlined 4 px wide in LightSlateGray; the agent (RoyalBlue
disc of radius 15 and a radius-11 disc in RoyalBlue x 1.2); the walls (LightGray, 4 px); then pymunk's
collision-point marks (short red anti-aliased lines). Every primitive is rasterised pixel for pixel as
pygame 2.6 does (see :mod:`envs.pusht.raster`); the 512 x 512 frame is resized with OpenCV's bilinear
interpolation. The static part (background, goal, walls) is drawn once; each frame only restores the
box the previous frame touched and draws the moving parts into a preallocated canvas.
"""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from envs.pusht import geometry as geo
from envs.pusht import raster
from envs.pusht.sim import Contact


def _light(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """The reference's ``light_color``: channels x 1.2 in float32, clipped at 255, then rounded
    (pymunk's ``SpaceDebugColor.as_int``), e.g. LightSlateGray (119, 136, 153) -> (143, 163, 184)."""
    c = np.minimum(np.float32(1.2) * np.float32(color), np.float32(255))
    return tuple(round(float(v)) for v in c)


WHITE = (255, 255, 255)
GOAL_COLOR = (144, 238, 144)  # LightGreen
WALL_COLOR = (211, 211, 211)  # LightGray
AGENT_COLOR = (65, 105, 225)  # RoyalBlue
BLOCK_COLOR = (119, 136, 153)  # LightSlateGray
CONTACT_COLOR = (231, 76, 60)  # pymunk's default collision-point colour
AGENT_INNER_COLOR = _light(AGENT_COLOR)
BLOCK_FILL_COLOR = _light(BLOCK_COLOR)
OUTLINE_RADIUS = 2.0  # the reference's override draws every polygon edge as a radius-2 fat segment
_WALL_ZONE = 12  # pixels from the border within which wall pixels may have been painted over
_SPRITE_CACHE = 8


def tee_sprite(rounded: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Draw the block from its rounded vertices (2, 4, 2) into a small patch.

    Returns the patch's top-left pixel (row, col) and its labels (h, w) uint8: 0 untouched,
    1 fill colour, 2 outline colour.
    Each part is filled, then outlined with radius-2 fat segments (thick Bresenham line, the
    reference's skewed quad, and a radius-2 disc at both ends), bar first, as pymunk draws them.
    """
    rv = rounded
    p1 = rv.reshape(8, 2)
    p2 = rv[:, [1, 2, 3, 0]].reshape(8, 2)
    d = np.abs(p2 - p1)
    length = np.sqrt((d * d).sum(axis=1).astype(np.float64))
    live = length > 0
    # The reference's outline quad offset: (|dy|, |dx|) scaled to the radius and rounded.
    scale = OUTLINE_RADIUS / np.where(live, length, 1.0)
    o = np.rint(d[:, ::-1] * scale[:, None]).astype(np.int64)
    qx = np.stack([p1[:, 0] - o[:, 0], p1[:, 0] + o[:, 0], p2[:, 0] + o[:, 0], p2[:, 0] - o[:, 0]], axis=1)
    qy = np.stack([p1[:, 1] - o[:, 1], p1[:, 1] + o[:, 1], p2[:, 1] + o[:, 1], p2[:, 1] - o[:, 1]], axis=1)
    top, left, right = raster.convex_rows(np.concatenate([rv[:, :, 0], qx]), np.concatenate([rv[:, :, 1], qy]))

    margin = 3  # outlines reach at most 2 px (+1 for the thick line's extra column) past a vertex
    r0, c0 = int(rv[..., 1].min()) - margin, int(rv[..., 0].min()) - margin
    h, w = int(rv[..., 1].max()) + margin + 1 - r0, int(rv[..., 0].max()) + margin + 1 - c0
    # Outline pixels of all eight edges, computed together, in edge order (bar's edges first).
    qrows = np.broadcast_to(top[2:, None] + np.arange(left.shape[1]), left[2:].shape)
    qr, qc = raster.spans_to_pixels(qrows.ravel(), left[2:].ravel(), right[2:].ravel())
    q_split = int(np.maximum(right[2:6] - left[2:6] + 1, 0).sum())
    lr, lc, l_count = raster.thick_lines_pixels(p1, p2, round(2 * OUTLINE_RADIUS))
    l_split = int(l_count[:4].sum())
    disc_r, disc_c = raster.disc_offsets(round(OUTLINE_RADIUS))
    # Paint layer labels (1 fill, 2 outline) in drawing order: fill bar, outline bar, fill stem, outline stem.
    label = np.zeros((h, w), dtype=np.uint8)
    cols = np.arange(c0, c0 + w, dtype=np.int32)
    for part, q, ln in ((0, slice(0, q_split), slice(0, l_split)), (1, slice(q_split, None), slice(l_split, None))):
        row = int(top[part]) - r0
        n_rows = min(left.shape[1], h - row)
        lo = left[part, :n_rows, None].astype(np.int32)
        hi = right[part, :n_rows, None].astype(np.int32)
        np.putmask(label[row : row + n_rows], (cols >= lo) & (cols <= hi), 1)
        segs = slice(4 * part, 4 * part + 4)
        ends = np.concatenate([p1[segs][live[segs]], p2[segs][live[segs]]])
        rr = np.concatenate([qr[q], lr[ln], (ends[:, 1:2] + disc_r).ravel()]) - r0
        cc = np.concatenate([qc[q], lc[ln], (ends[:, 0:1] + disc_c).ravel()]) - c0
        label[rr, cc] = 2
    return r0, c0, label


def _agent_sprite() -> tuple[np.ndarray, np.ndarray]:
    """The agent disc (outer RoyalBlue, inner lighter) as an RGB patch and uint8 mask, centred."""
    radius = round(geo.AGENT_RADIUS)
    size = 2 * radius + 1
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    for rad, color in ((radius, AGENT_COLOR), (radius - 4, AGENT_INNER_COLOR)):
        rr, cc = raster.disc_offsets(rad)
        rgb[rr + radius, cc + radius] = color
        mask[rr + radius, cc + radius] = 1
    return rgb, mask


def _paste(canvas: np.ndarray, r0: int, c0: int, rgb: np.ndarray, mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Copy the pixels of a sprite where ``mask`` != 0 onto the canvas at (r0, c0), clipped; returns the box."""
    h, w = mask.shape
    H, W = canvas.shape[:2]
    a0, b0 = max(r0, 0), max(c0, 0)
    a1, b1 = min(r0 + h, H), min(c0 + w, W)
    if a0 >= a1 or b0 >= b1:
        return None
    src = (slice(a0 - r0, a1 - r0), slice(b0 - c0, b1 - c0))
    cv2.copyTo(rgb[src], mask[src], canvas[a0:a1, b0:b1])  # writes into the canvas view in place
    return a0, a1, b0, b1


class SceneRenderer:
    """Draws PushT scenes into a reused 512 x 512 RGB canvas and resizes them to observation / video sizes."""

    def __init__(self) -> None:
        size = geo.WINDOW_SIZE
        bg = np.full((size, size, 3), 255, dtype=np.uint8)
        for part in geo.tee_world(geo.GOAL_POSE, draw_order=True):
            raster.paint(bg, raster.closed_polygon_spans(part), GOAL_COLOR)
        walls = np.zeros((size, size, 3), dtype=np.uint8)
        for a, b in geo.WALLS:
            for spans in raster.fat_segment_spans(a, b, geo.WALL_RADIUS):
                raster.paint(bg, spans, WALL_COLOR)
                raster.paint(walls, spans, (1, 1, 1))
        bg.setflags(write=False)
        self.background = bg
        self._wall_mask = walls[..., 0].copy()  # uint8, non-zero on wall pixels
        self.canvas = bg.copy()
        self._dirty: list[tuple[int, int, int, int]] = []
        self._agent_rgb, self._agent_mask = _agent_sprite()
        self._fill_img = np.empty_like(bg)
        self._fill_img[:] = BLOCK_FILL_COLOR
        self._outline_img = np.empty_like(bg)
        self._outline_img[:] = BLOCK_COLOR
        # Block sprites by vertex offsets relative to the first rounded vertex: a block that has not
        # rotated (it is often still, or pushed straight) is pasted without being drawn again.
        self._sprites: OrderedDict[bytes, tuple[int, int, np.ndarray, np.ndarray]] = OrderedDict()

    def _block_sprite(self, block_pose: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Top-left pixel and fill / outline masks (uint8) of the block at ``block_pose``."""
        rounded = np.rint(geo.tee_world(block_pose, draw_order=True)).astype(np.int64)
        anchor = rounded[0, 0]
        key = (rounded - anchor).tobytes()
        hit = self._sprites.get(key)
        if hit is None:
            r0, c0, label = tee_sprite(rounded)
            fill = cv2.compare(label, 1, cv2.CMP_EQ)
            outline = cv2.compare(label, 2, cv2.CMP_EQ)
            hit = (r0 - int(anchor[1]), c0 - int(anchor[0]), fill, outline)
            self._sprites[key] = hit
            if len(self._sprites) > _SPRITE_CACHE:
                self._sprites.popitem(last=False)
        else:
            self._sprites.move_to_end(key)
        dr, dc, fill, outline = hit
        return dr + int(anchor[1]), dc + int(anchor[0]), fill, outline

    def draw(self, block_pose: np.ndarray, agent_pos: np.ndarray, contacts: list[Contact] = ()) -> np.ndarray:
        """Draw a scene; returns the (512, 512, 3) uint8 canvas, overwritten by the next call."""
        canvas, background = self.canvas, self.background
        for r0, r1, c0, c1 in self._dirty:  # undo the previous frame's moving parts
            canvas[r0:r1, c0:c1] = background[r0:r1, c0:c1]
        r0, c0, fill, outline = self._block_sprite(block_pose)
        h, w = fill.shape
        boxes = [_paste(canvas, r0, c0, self._fill_img[:h, :w], fill)]
        _paste(canvas, r0, c0, self._outline_img[:h, :w], outline)
        radius = round(geo.AGENT_RADIUS)
        cx, cy = round(agent_pos[0]), round(agent_pos[1])
        boxes.append(_paste(canvas, cy - radius, cx - radius, self._agent_rgb, self._agent_mask))
        boxes = [b for b in boxes if b is not None]
        lo, hi = _WALL_ZONE, geo.WINDOW_SIZE - _WALL_ZONE
        for r0, r1, c0, c1 in boxes:
            if r0 < lo or c0 < lo or r1 > hi or c1 > hi:  # the walls are drawn after the bodies
                cv2.copyTo(background[r0:r1, c0:c1], self._wall_mask[r0:r1, c0:c1], canvas[r0:r1, c0:c1])
        for ax, ay, bx, by, nx, ny in contacts:
            # pymunk marks a contact with a segment from point_a - 2n to point_b + 2n, rounded to pixels.
            touched = raster.aaline(
                canvas, CONTACT_COLOR, round(ax - 2 * nx), round(ay - 2 * ny), round(bx + 2 * nx), round(by + 2 * ny)
            )
            if touched:
                rows, cols = zip(*touched)
                boxes.append((min(rows), max(rows) + 1, min(cols), max(cols) + 1))
        self._dirty = boxes
        return canvas

    @staticmethod
    def resize(frame: np.ndarray, size: int) -> np.ndarray:
        """Resize a frame to ``size`` x ``size`` with OpenCV's bilinear interpolation, as the reference does."""
        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def draw_action(img: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Draw the reference's red cross marker at ``action`` (workspace pixels) on an image, in place."""
        size = img.shape[0]
        coord = (np.asarray(action, dtype=np.float64) / geo.WINDOW_SIZE * size).astype(np.int32)
        cv2.drawMarker(
            img,
            (int(coord[0]), int(coord[1])),
            color=(255, 0, 0),
            markerType=cv2.MARKER_CROSS,
            markerSize=int(8 / 96 * size),
            thickness=max(1, int(1 / 96 * size)),
        )
        return img
