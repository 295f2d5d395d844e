"""Naming the points of a scatter figure so that every name is legible: no name over another name or a marker.

Each name goes to the free spot nearest its point, tried on rings of growing radius around it, the most crowded
points first; a name placed away from its point gets a thin leader line. Points drawn on top of each other share
one name ("kernel 7 / gelu"). Everything is measured in display pixels once the figure's layout is settled.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .figure_data import Point, Trajectory

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in display pixels

LABEL_FONT_SIZE = 7
# Rings of candidate spots around a point (points from it), tried nearest first, and spots per ring.
RING_RADII = (7, 11, 16, 22, 30, 40, 52, 66, 82)
SPOTS_PER_RING = 24
# Names placed this far (points) from their point get a leader line.
LEADER_DISTANCE = 10
# A marker's radius with a margin (points), and points closer than this (pixels) are drawn on top of each other.
MARKER_RADIUS = 4.5
SAME_SPOT_PX = 2.5
# What an overlap costs per pixel², by what it covers; a spot's distance costs DISTANCE_COST per point of radius.
LABEL_COST, MARKER_COST, LINE_COST, OUTSIDE_COST, DISTANCE_COST = 400.0, 60.0, 4.0, 400.0, 6.0


@dataclass(frozen=True)
class Spot:
    """Where a name goes relative to its point: offset in points, and its alignment there."""

    dx: float
    dy: float
    horizontal: str
    vertical: str

    @property
    def radius(self) -> float:
        return math.hypot(self.dx, self.dy)


def ring_spots() -> list[Spot]:
    spots = []
    for radius in RING_RADII:
        for index in range(SPOTS_PER_RING):
            angle = 2 * math.pi * index / SPOTS_PER_RING
            cos, sin = math.cos(angle), math.sin(angle)
            spots.append(Spot(radius * cos, radius * sin,
                              "left" if cos > 0.35 else "right" if cos < -0.35 else "center",
                              "bottom" if sin > 0.35 else "top" if sin < -0.35 else "center"))
    return spots


SPOTS = ring_spots()


# Arrows between points at (nearly) the same x, which would lie on top of each other, bow sideways by this much
# (matplotlib's arc3 curvature), alternately left and right; "nearly": within this share of the x range.
BEND, SAME_X_SHARE = 0.15, 0.02


def edge_bends(trajectory: Trajectory) -> dict[tuple[str, str], float]:
    """The curvature of each arrow of a trajectory (0: straight)."""
    xs = [point.x for point in trajectory.points]
    span = (max(xs) - min(xs)) if xs else 0.0
    bends, side = {}, 1.0
    for start, end in trajectory.adopted_path + trajectory.branches:
        a, b = trajectory.point(start), trajectory.point(end)
        if span > 0 and abs(b.x - a.x) < SAME_X_SHARE * span:
            bends[(start, end)], side = BEND * side, -side
        else:
            bends[(start, end)] = 0.0
    return bends


def label_points(fig: Figure, panels: Sequence[tuple[object, Sequence[Trajectory]]]) -> None:
    """Name every point of every panel; `panels` pairs each axes with the trajectories drawn on it.

    Run it after everything else is drawn: it lays the figure out once to know where the points land.
    """
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()  # settles the layout, hence the data -> pixel transform
    scale = fig.dpi / 72  # pixels per point
    for ax, trajectories in panels:
        _label_axes(ax, [t for t in trajectories if t is not None], renderer, scale)


def _label_axes(ax, trajectories: Sequence[Trajectory], renderer, scale: float) -> None:
    to_pixels = ax.transData.transform
    groups = _same_spot_groups([p for t in trajectories for p in t.points], to_pixels)
    radius = MARKER_RADIUS * scale
    markers = [(x - radius, y - radius, x + radius, y + radius) for (x, y), _ in groups]
    lines = _line_samples(ax, trajectories, to_pixels)
    frame = tuple(ax.get_window_extent(renderer).extents)
    placed: list[Box] = []
    crowding = [sum(math.dist(anchor, other) < 60 * scale for other, _ in groups) for anchor, _ in groups]
    for index in sorted(range(len(groups)), key=lambda i: (-crowding[i], -groups[i][0][1])):
        anchor, points = groups[index]
        text = " / ".join(point.label for point in points)
        probe = ax.annotate(text, (points[0].x, points[0].y), fontsize=LABEL_FONT_SIZE)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        spot, box = min(((spot, _box(anchor, spot, extent.width, extent.height, scale)) for spot in SPOTS),
                        key=lambda candidate: _cost(candidate[1], candidate[0], anchor, scale, placed, markers,
                                                    lines, frame))
        leader = {"arrowstyle": "-", "color": "#999999", "lw": 0.5, "shrinkA": 1, "shrinkB": 3}
        label = ax.annotate(text, (points[0].x, points[0].y), xytext=(spot.dx, spot.dy), textcoords="offset points",
                            ha=spot.horizontal, va=spot.vertical, fontsize=LABEL_FONT_SIZE, color="#333333",
                            zorder=5, arrowprops=leader if spot.radius >= LEADER_DISTANCE else None)
        label.set_in_layout(False)  # names never move the axes: they were placed inside them
        placed.append(box)


def _same_spot_groups(points: Sequence[Point], to_pixels) -> list[tuple[tuple[float, float], list[Point]]]:
    """Points by where they are drawn: those within SAME_SPOT_PX of each other share one name, top one first."""
    groups: list[tuple[tuple[float, float], list[Point]]] = []
    for point in sorted(points, key=lambda p: -p.y):
        anchor = tuple(to_pixels((point.x, point.y)))
        for spot, members in groups:
            if math.dist(spot, anchor) < SAME_SPOT_PX:
                members.append(point)
                break
        else:
            groups.append((anchor, [point]))
    return groups


def _line_samples(ax, trajectories: Sequence[Trajectory], to_pixels) -> np.ndarray:
    """Pixels along every arrow and error bar, which a name should not cover."""
    samples = []
    for trajectory in trajectories:
        bends = edge_bends(trajectory)
        segments = [((trajectory.point(a).x, trajectory.point(a).y), (trajectory.point(b).x, trajectory.point(b).y),
                     bends[(a, b)]) for a, b in trajectory.adopted_path + trajectory.branches]
        segments += [((p.x, p.y_low), (p.x, p.y_high), 0.0) for p in trajectory.points
                     if math.isfinite(p.y_low) and math.isfinite(p.y_high)]
        segments += [((p.x_low, p.y), (p.x_high, p.y), 0.0) for p in trajectory.points
                     if math.isfinite(p.x_low) and math.isfinite(p.x_high)]
        for start, end, bend in segments:
            (x0, y0), (x1, y1) = to_pixels([start, end])
            # arc3: a quadratic Bézier through the control point mid + bend * (dy, -dx)
            cx, cy = (x0 + x1) / 2 + bend * (y1 - y0), (y0 + y1) / 2 - bend * (x1 - x0)
            steps = max(2, int(math.hypot(x1 - x0, y1 - y0) / 4))
            for i in range(steps + 1):
                t = i / steps
                samples.append(((1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t * t * x1,
                                (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t * t * y1))
    return np.array(samples, dtype=float).reshape(-1, 2)


def _box(anchor: tuple[float, float], spot: Spot, width: float, height: float, scale: float) -> Box:
    """The pixel box of a name of the given size placed at `spot` from `anchor`."""
    x = anchor[0] + spot.dx * scale - {"left": 0.0, "center": width / 2, "right": width}[spot.horizontal]
    y = anchor[1] + spot.dy * scale - {"bottom": 0.0, "center": height / 2, "top": height}[spot.vertical]
    return (x, y, x + width, y + height)


def _cost(box: Box, spot: Spot, anchor, scale: float, placed: Sequence[Box], markers: Sequence[Box],
          lines: np.ndarray, frame: Box) -> float:
    padded = (box[0] - 3.5, box[1] - 1.5, box[2] + 3.5, box[3] + 1.5)  # a word's gap between names on a line
    area = (box[2] - box[0]) * (box[3] - box[1])
    cost = LABEL_COST * sum(overlap(padded, other) for other in placed)
    cost += MARKER_COST * sum(overlap(padded, marker) for marker in markers)
    if len(lines):
        inside = (lines[:, 0] >= box[0]) & (lines[:, 0] <= box[2]) & (lines[:, 1] >= box[1]) & (lines[:, 1] <= box[3])
        cost += LINE_COST * 9 * int(inside.sum())
    cost += OUTSIDE_COST * (area - overlap(box, frame))
    cost += DISTANCE_COST * spot.radius * scale
    if spot.radius >= LEADER_DISTANCE:  # a leader line over another point would point at the wrong one
        cost += MARKER_COST * area * _leader_crossings(anchor, box, markers)
    return cost


def _leader_crossings(anchor: tuple[float, float], box: Box, markers: Sequence[Box]) -> int:
    """How many markers other than the point's own a leader line from `anchor` to the name's box passes over."""
    target = (min(max(anchor[0], box[0]), box[2]), min(max(anchor[1], box[1]), box[3]))
    samples = [(anchor[0] + t * (target[0] - anchor[0]), anchor[1] + t * (target[1] - anchor[1]))
               for t in (0.35, 0.5, 0.65, 0.8, 0.95)]
    return sum(any(m[0] <= x <= m[2] and m[1] <= y <= m[3] for x, y in samples)
               for m in markers if not (m[0] <= anchor[0] <= m[2] and m[1] <= anchor[1] <= m[3]))


def overlap(a: Box, b: Box) -> float:
    """The area two (x0, y0, x1, y1) boxes share."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0
