"""Pixel-exact, vectorised re-implementations of the pygame 2 drawing routines PushT uses.

The reference renders PushT with pygame (``pygame.draw.polygon``, ``lines`` with width 4, ``circle``,
``aalines``) through pymunk's debug draw. To reproduce its images without pygame and quickly, each
primitive is turned into horizontal pixel spans (row, x_first, x_last) with the same integer
arithmetic as pygame's C code (``src_c/draw.c``), and spans are painted with a few numpy operations.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

Spans = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, first x, last x (inclusive), int64


def fillpoly_spans(xs: np.ndarray, ys: np.ndarray) -> Spans:
    """Spans of pygame's filled polygon (``draw_fillpoly``) through integer points ``xs, ys``."""
    xs = np.asarray(xs, dtype=np.int64)
    ys = np.asarray(ys, dtype=np.int64)
    miny, maxy = int(ys.min()), int(ys.max())
    if miny == maxy:  # a polygon one pixel high is a single line
        return np.array([miny]), np.array([xs.min()]), np.array([xs.max()])
    px, py = np.roll(xs, 1), np.roll(ys, 1)  # the previous point of each point
    keep = py != ys  # horizontal edges are handled separately below
    down = py < ys
    x1 = np.where(down, px, xs)[keep]
    y1 = np.where(down, py, ys)[keep]
    x2 = np.where(down, xs, px)[keep]
    y2 = np.where(down, ys, py)[keep]
    rows = np.arange(miny, maxy + 1)[:, None]
    hit = ((rows >= y1) & (rows < y2)) | ((rows == maxy) & (y2 == maxy))
    # pygame 2.6 computes x1 + (y - y1) * dx / dy in floating point and truncates it toward zero
    # (checked pixel for pixel against it, off-canvas polygons included).
    xi = np.trunc((rows - y1) * (x2 - x1) / (y2 - y1) + x1).astype(np.int64)
    big = np.iinfo(np.int64).max
    xi = np.sort(np.where(hit, xi, big), axis=1)
    count = hit.sum(axis=1)
    out_r, out_a, out_b = [], [], []
    for k in range(0, xi.shape[1] - 1, 2):
        sel = count >= k + 2
        out_r.append(rows[sel, 0])
        out_a.append(xi[sel, k])
        out_b.append(xi[sel, k + 1])
    # Horizontal edges strictly between the top and bottom rows are drawn explicitly.
    flat = (py == ys) & (ys > miny) & (ys < maxy)
    if flat.any():
        out_r.append(ys[flat])
        out_a.append(np.minimum(xs[flat], px[flat]))
        out_b.append(np.maximum(xs[flat], px[flat]))
    return np.concatenate(out_r), np.concatenate(out_a), np.concatenate(out_b)


def bresenham(x1: int, y1: int, x2: int, y2: int) -> tuple[np.ndarray, np.ndarray]:
    """Points of pygame's Bresenham line from (x1, y1) to (x2, y2), both ends included, in closed form."""
    dx, dy = abs(x2 - x1), abs(y2 - y1)
    sx = 1 if x1 < x2 else -1
    sy = 1 if y1 < y2 else -1
    n = max(dx, dy)
    k = np.arange(n + 1)
    if dx > dy:
        e0 = dx // 2
        minor = -((e0 - k * dy) // dx)  # ceil((k*dy - e0) / dx): the steps taken along y
        return x1 + sx * k, y1 + sy * minor
    f0 = dy // 2
    minor = -((f0 - k * dx) // dy) if dy else np.zeros_like(k)
    return x1 + sx * minor, y1 + sy * k


def line_width_spans(x1: int, y1: int, x2: int, y2: int, width: int, size: int = 512) -> Spans:
    """Spans of pygame's ``draw_line_width`` (a Bresenham line thickened across its minor axis)."""
    if _needs_clipping(x1, y1, x2, y2, size):
        rows, cols = clipped_line_width_pixels(x1, y1, x2, y2, width, size)
        return rows, cols, cols
    bx, by = bresenham(x1, y1, x2, y2)
    lo, hi = (width - 1) // 2, width // 2
    if abs(x1 - x2) <= abs(y1 - y2):  # thickness grows along x: one horizontal span per point
        return by, bx - lo, bx + hi
    offsets = np.arange(-lo, hi + 1)  # thickness grows along y: a vertical run of pixels per point
    rows = (by[:, None] + offsets[None, :]).ravel()
    cols = np.repeat(bx, offsets.size)
    return rows, cols, cols


def _clip_line(x1: int, y1: int, x2: int, y2: int, size: int) -> tuple[int, int, int, int] | None:
    """pygame's ``clip_line`` (Liang-Barsky against [0, size] with C rounding); None if fully outside."""
    p1 = x1 - x2
    p2 = -p1
    p3 = y1 - y2
    p4 = -p3
    q1, q2, q3, q4 = x1, size - x1, y1, size - y1
    if (p1 == 0 and q1 < 0) or (p2 == 0 and q2 < 0) or (p3 == 0 and q3 < 0) or (p4 == 0 and q4 < 0):
        return None
    nmax, pmin = 0.0, 1.0
    for p, pn, qa, qb in ((p1, p2, q1, q2), (p3, p4, q3, q4)):
        if p:
            r1, r2 = qa / p, qb / pn
            if p < 0:
                nmax, pmin = max(nmax, r1), min(pmin, r2)
            else:
                nmax, pmin = max(nmax, r2), min(pmin, r1)
    if nmax > pmin:
        return None

    def rnd(v: float) -> int:  # C: (int)(v < 0 ? v - 0.5 : v + 0.5)
        return int(v - 0.5) if v < 0 else int(v + 0.5)

    return x1 + rnd(p2 * nmax), y1 + rnd(p4 * nmax), x1 + rnd(p2 * pmin), y1 + rnd(p4 * pmin)


def clipped_line_width_pixels(
    x1: int, y1: int, x2: int, y2: int, width: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of pygame's ``draw_line_width`` on a ``size`` x ``size`` surface, clipping included.

    A direct port of the C loop, used only for lines that leave the surface: pygame then restarts
    Bresenham from the clipped end point with the unclipped error term, so its pixels differ from
    the unclipped line's.
    """
    xinc = abs(x1 - x2) <= abs(y1 - y2)
    dx, dy = abs(x2 - x1), abs(y2 - y1)
    sx = 1 if x1 < x2 else -1
    sy = 1 if y1 < y2 else -1
    err = int((dx if dx > dy else -dy) / 2)  # C integer division truncates toward zero
    end_x, end_y = x2, y2
    clipped = _clip_line(x1, y1, x2, y2, size)
    rows: list[int] = []
    cols: list[int] = []
    if clipped is None:
        return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    x1, y1, x2, y2 = clipped
    lo, hi = (width - 1) // 2, width // 2
    left_top, right_bottom = (x1 - lo, x1 + hi) if xinc else (y1 - lo, y1 + hi)

    def sign(v: int, default: int) -> int:
        return 1 if v > 0 else (-1 if v < 0 else default)

    def inside(x: int, y: int) -> bool:
        return 0 <= x < size and 0 <= y < size

    def draw() -> None:
        if xinc:
            for x in range(left_top, right_bottom + 1):
                rows.append(y1)
                cols.append(x)
        else:
            for y in range(left_top, right_bottom + 1):
                rows.append(y)
                cols.append(x1)

    while sign(x1 - x2, sx) != sx or sign(y1 - y2, sy) != sy:
        draw()
        e2 = err
        if e2 > -dx:
            err -= dy
            x1 += sx
            if xinc:
                left_top, right_bottom = left_top + sx, right_bottom + sx
        if e2 < dy:
            err += dx
            y1 += sy
            if not xinc:
                left_top, right_bottom = left_top + sy, right_bottom + sy
    if xinc:
        while y1 != end_y and (inside(left_top, y1) or inside(right_bottom, y1)):
            draw()
            e2 = err
            if e2 > -dx:
                err -= dy
                x1 += sx
                left_top, right_bottom = left_top + sx, right_bottom + sx
            if e2 < dy:
                err += dx
                y1 += sy
    else:
        while x1 != end_x and (inside(x1, left_top) or inside(x1, right_bottom)):
            draw()
            e2 = err
            if e2 > -dx:
                err -= dy
                x1 += sx
            if e2 < dy:
                err += dx
                y1 += sy
                left_top, right_bottom = left_top + sy, right_bottom + sy
    draw()
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def _needs_clipping(x1: int, y1: int, x2: int, y2: int, size: int) -> bool:
    """pygame's clip changes a line only when an end point lies outside [0, size]."""
    return not all(0 <= v <= size for v in (x1, y1, x2, y2))


@lru_cache(maxsize=None)
def _circle_table(radius: int) -> Spans:
    """Spans of pygame's ``draw_circle_filled`` centred on (0, 0)."""
    f, ddf_x, ddf_y, x, y = 1 - radius, 0, -2 * radius, 0, radius
    rows, a, b = [], [], []
    while x < y:
        if f >= 0:
            y -= 1
            ddf_y += 2
            f += ddf_y
        x += 1
        ddf_x += 2
        f += ddf_x + 1
        if f >= 0:
            rows += [y - 1, -y]
            a += [-x, -x]
            b += [x - 1, x - 1]
        rows += [x - 1, -x]
        a += [-y, -y]
        b += [y - 1, y - 1]
    arr = (np.array(rows, dtype=np.int64), np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
    for v in arr:
        v.setflags(write=False)
    return arr


def circle_spans(cx: int, cy: int, radius: int) -> Spans:
    """Spans of a filled pygame circle of integer ``radius`` centred on integer (cx, cy)."""
    if radius < 1:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    r, a, b = _circle_table(radius)
    return r + cy, a + cx, b + cx


def fat_segment_spans(a: tuple[float, float], b: tuple[float, float], radius: float) -> list[Spans]:
    """Spans of pymunk's pygame ``draw_fat_segment`` override (thick line, quad and end discs)."""
    p1x, p1y = round(a[0]), round(a[1])
    p2x, p2y = round(b[0]), round(b[1])
    width = round(max(1, radius * 2))
    out = [line_width_spans(p1x, p1y, p2x, p2y, width)]
    if width > 2:
        # The reference takes absolute values here, so the "orthogonal" offset is only truly
        # orthogonal for some directions; kept as is because it shapes the outline's pixels.
        o0, o1 = abs(p2y - p1y), abs(p2x - p1x)
        if o0 == 0 and o1 == 0:
            return out
        scale = radius / (o0 * o0 + o1 * o1) ** 0.5
        o0, o1 = round(o0 * scale), round(o1 * scale)
        qx = np.array([p1x - o0, p1x + o0, p2x + o0, p2x - o0])
        qy = np.array([p1y - o1, p1y + o1, p2y + o1, p2y - o1])
        out.append(fillpoly_spans(qx, qy))
        out.append(circle_spans(p1x, p1y, round(radius)))
        out.append(circle_spans(p2x, p2y, round(radius)))
    return out


def polygon_outline_spans(verts: np.ndarray, radius: float = 2.0) -> list[Spans]:
    """Spans of the fat outline pymunk's pygame override draws around a polygon (``verts`` (n, 2))."""
    n = len(verts)
    out: list[Spans] = []
    for i in range(n):
        out.extend(fat_segment_spans(verts[i], verts[(i + 1) % n], radius))
    return out


def round_points(verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round float points (n, 2) to pixels as pymunk's ``to_pygame`` does (half to even)."""
    r = np.rint(verts).astype(np.int64)
    return r[:, 0], r[:, 1]


def closed_polygon_spans(verts: np.ndarray) -> Spans:
    """Spans of a filled polygon drawn from float vertices with the reference's closing point."""
    xs, ys = round_points(verts)
    return fillpoly_spans(np.append(xs, xs[0]), np.append(ys, ys[0]))


def merge(spans: list[Spans]) -> Spans:
    """Concatenate several span sets into one."""
    return (
        np.concatenate([s[0] for s in spans]),
        np.concatenate([s[1] for s in spans]),
        np.concatenate([s[2] for s in spans]),
    )


def paint(canvas: np.ndarray, spans: Spans, color: tuple[int, int, int]) -> tuple[int, int, int, int] | None:
    """Paint ``spans`` onto ``canvas`` (H, W, 3) in ``color``; returns the touched box (r0, r1, c0, c1)."""
    rows, a, b = spans
    h, w = canvas.shape[:2]
    a = np.maximum(a, 0)
    b = np.minimum(b, w - 1)
    ok = (rows >= 0) & (rows < h) & (a <= b)
    if not ok.all():
        rows, a, b = rows[ok], a[ok], b[ok]
    if rows.size == 0:
        return None
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(a.min()), int(b.max()) + 1
    bw = c1 - c0 + 1
    # Difference array: +1 where a span starts, -1 after it ends; a running sum marks covered pixels.
    size = (r1 - r0) * bw
    base = (rows - r0) * bw
    diff = np.bincount(base + (a - c0), minlength=size) - np.bincount(base + (b - c0 + 1), minlength=size)
    mask = np.cumsum(diff.reshape(r1 - r0, bw), axis=1)[:, :-1] > 0
    canvas[r0:r1, c0:c1][mask] = color
    return r0, r1, c0, c1


def aaline(
    canvas: np.ndarray, color: tuple[int, int, int], x0: float, y0: float, x1: float, y1: float
) -> list[tuple[int, int]]:
    """Blend pygame's anti-aliased line (``draw_aaline`` with blend) into ``canvas``; returns touched pixels.

    pygame computes this in single precision; float32 arithmetic is used so the blended bytes match.
    """
    f = np.float32
    h, w = canvas.shape[:2]
    touched: list[tuple[int, int]] = []

    def plot(px: int, py: int, brightness) -> None:
        if 0 <= px < w and 0 <= py < h:
            bg = canvas[py, px]
            br = f(brightness)
            for ch in range(3):
                canvas[py, px, ch] = int(br * f(color[ch]) + (f(1) - br) * f(bg[ch]))
            touched.append((py, px))

    from_x, from_y, to_x, to_y = f(x0), f(y0), f(x1), f(y1)
    dx, dy = to_x - from_x, to_y - from_y
    if abs(dx) < 0.0001 and abs(dy) < 0.0001:
        plot(int(np.floor(from_x + f(0.5))), int(np.floor(from_y + f(0.5))), f(1))
        return touched
    steep = abs(dx) < abs(dy)
    if steep:
        from_x, from_y, to_x, to_y, dx, dy = from_y, from_x, to_y, to_x, dy, dx
    if dx < 0:
        from_x, to_x, from_y, to_y = to_x, from_x, to_y, from_y
        dx, dy = -dx, -dy
    # pygame clips against the canvas grown by one pixel on every side, in single precision.
    clip_lo, clip_hi = f(-1), f(min(w, h))
    if to_x <= clip_lo or from_x >= clip_hi:
        return touched
    gradient = f(dy / dx)
    if from_x < clip_lo:
        from_y, from_x = f(from_y + gradient * f(clip_lo - from_x)), clip_lo
    if to_x > clip_hi:
        to_y, to_x = f(to_y + gradient * f(clip_hi - to_x)), clip_hi
    if gradient > 0:
        if to_y <= clip_lo or from_y >= clip_hi:
            return touched
        if from_y < clip_lo:
            from_x, from_y = f(from_x + f(clip_lo - from_y) / gradient), clip_lo
        if to_y > clip_hi:
            to_x, to_y = f(to_x + f(clip_hi - to_y) / gradient), clip_hi
    else:
        if from_y <= clip_lo or to_y >= clip_hi:
            return touched
        if to_y < clip_lo:
            to_x, to_y = f(to_x + f(clip_lo - to_y) / gradient), clip_lo
        if from_y > clip_hi:
            from_x, from_y = f(from_x + f(clip_hi - from_y) / gradient), clip_hi
    from_y = from_y + f(1)
    to_y = to_y + f(1)

    def put(major: int, minor: int, brightness) -> None:
        if steep:
            plot(minor, major, brightness)
        else:
            plot(major, minor, brightness)

    x_start = int(from_x)
    y_end = intersect_y = f(from_y + gradient * f(x_start - from_x))
    if to_x > clip_lo + f(1):
        x_gap = f(f(1) + f(x_start) - from_x)
        brightness = f(y_end - f(int(y_end)))
        if int(y_end) < y_end:
            put(x_start, int(y_end), brightness * x_gap)
        put(x_start, int(y_end) - 1, f(f(1) - brightness) * x_gap)
        intersect_y = f(intersect_y + gradient)
        x_start += 1

    x_end = int(np.ceil(to_x))
    if from_x < clip_hi - f(1):
        y_end = f(to_y + gradient * f(x_end - to_x))
        x_gap = f(f(1) - f(x_end) + to_x)
        brightness = f(y_end - f(int(y_end)))
        if int(y_end) < y_end:
            put(x_end, int(y_end), brightness * x_gap)
        put(x_end, int(y_end) - 1, f(f(1) - brightness) * x_gap)

    for x in range(x_start, x_end):
        yi = int(intersect_y)
        brightness = f(f(1) - intersect_y + f(yi))
        put(x, yi - 1, brightness)
        if yi < intersect_y:
            put(x, yi, f(f(1) - brightness))
        intersect_y = f(intersect_y + gradient)
    return touched


# -- fast paths for convex quadrilaterals and thick lines, used to draw the block every frame -------


def convex_rows(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row spans of P convex integer polygons (``xs, ys`` (P, n)) filled by pygame's rule.

    A convex polygon crosses every scanline exactly twice under pygame's half-open edge rule, so its
    span on a row is [min, max] of the intersections and no sorting or horizontal-edge pass is needed.
    Returns the first row per polygon (P,), and left / right columns (P, H), with left > right on
    rows a polygon does not reach.
    """
    xs_t, ys_t = xs.T, ys.T  # edges on the first axis keeps every array op long and contiguous
    px, py = np.roll(xs_t, 1, axis=0), np.roll(ys_t, 1, axis=0)
    down = py < ys_t
    x1 = np.where(down, px, xs_t)[:, :, None]
    y1 = np.where(down, py, ys_t)[:, :, None]
    x2 = np.where(down, xs_t, px)[:, :, None]
    y2 = np.where(down, ys_t, py)[:, :, None]
    miny, maxy = ys.min(axis=1), ys.max(axis=1)
    rows = (miny[:, None] + np.arange(int((maxy - miny).max()) + 1))[None]  # (1, P, H)
    mx = maxy[None, :, None]
    hit = ((rows >= y1) & (rows < y2)) | ((rows == mx) & (y2 == mx) & (y1 != y2))
    # pygame truncates x1 + (r - y1) * dx / dy toward zero (see fillpoly_spans). In float32 this is
    # exact: the numerator is an integer below 2**24 and a non-integer quotient lies at least 1/dy
    # from the nearest integer.
    num = ((rows - y1) * (x2 - x1)).astype(np.float32)
    xi = np.trunc(num / np.maximum(y2 - y1, 1).astype(np.float32) + x1.astype(np.float32))
    left = np.minimum.reduce(np.where(hit, xi, np.float32(1e9)), axis=0)
    right = np.maximum.reduce(np.where(hit, xi, np.float32(-1e9)), axis=0)
    return miny, left.astype(np.int64), right.astype(np.int64)


def spans_to_pixels(rows: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand spans (inclusive, possibly empty when a > b) into pixel coordinates."""
    lengths = np.maximum(b - a + 1, 0)
    total = int(lengths.sum())
    starts = np.cumsum(lengths) - lengths
    offset = np.arange(total) - np.repeat(starts, lengths)
    return np.repeat(rows, lengths), np.repeat(a, lengths) + offset


def thick_lines_pixels(
    p1: np.ndarray, p2: np.ndarray, width: int, size: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of pygame's ``draw_line_width`` for P integer segments ``p1 -> p2`` ((P, 2) each).

    Returns rows and cols, segment by segment in order, and the pixel count per segment.
    """
    if p1.min() < 0 or p2.min() < 0 or p1.max() > size or p2.max() > size:
        # Rare (a block partly off the canvas): go segment by segment, clipping exactly like pygame.
        parts = [
            clipped_line_width_pixels(int(a[0]), int(a[1]), int(b[0]), int(b[1]), width, size)
            if _needs_clipping(int(a[0]), int(a[1]), int(b[0]), int(b[1]), size)
            else thick_lines_pixels(a[None], b[None], width, size)[:2]
            for a, b in zip(p1, p2)
        ]
        counts = np.array([len(r) for r, _ in parts])
        return np.concatenate([r for r, _ in parts]), np.concatenate([c for _, c in parts]), counts
    x1, y1, x2, y2 = p1[:, 0:1], p1[:, 1:2], p2[:, 0:1], p2[:, 1:2]
    dx, dy = np.abs(x2 - x1), np.abs(y2 - y1)
    xmajor = dx > dy
    n, m = np.maximum(dx, dy), np.minimum(dx, dy)
    k = np.arange(int(n.max()) + 1)[None, :]
    # Closed-form Bresenham (see bresenham()): ceil((k*m - n//2) / n) steps along the minor axis,
    # exact in float32 because the numerator is a small integer.
    minor = -np.floor((n // 2 - k * m).astype(np.float32) / np.maximum(n, 1).astype(np.float32)).astype(np.int64)
    bx = x1 + np.where(x1 < x2, 1, -1) * np.where(xmajor, k, minor)
    by = y1 + np.where(y1 < y2, 1, -1) * np.where(xmajor, minor, k)
    offs = np.arange(-((width - 1) // 2), width // 2 + 1)
    # Thickness grows across the minor axis: along x for steep lines, along y for flat ones.
    gy = xmajor[:, :, None].astype(np.int64)
    rows = by[:, :, None] + offs * gy
    cols = bx[:, :, None] + offs * (1 - gy)
    keep = np.broadcast_to((k <= n)[:, :, None], rows.shape)
    return rows[keep], cols[keep], (n[:, 0] + 1) * offs.size


@lru_cache(maxsize=None)
def disc_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (rows, cols) of pygame's filled circle of integer ``radius`` around (0, 0)."""
    r, c = spans_to_pixels(*_circle_table(radius))
    mask = np.zeros((2 * radius + 2, 2 * radius + 2), dtype=bool)
    mask[r + radius + 1, c + radius + 1] = True  # de-duplicate overlapping spans
    rr, cc = np.nonzero(mask)
    rr, cc = rr - radius - 1, cc - radius - 1
    rr.setflags(write=False)
    cc.setflags(write=False)
    return rr, cc
