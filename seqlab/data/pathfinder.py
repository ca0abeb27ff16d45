"""Pathfinder (Linsley et al. 2018) as LRA uses it: are the two markers on one dashed path?

Each image (``resolution`` x ``resolution``, 32 for Pathfinder, 128 for Path-X) holds two long
dashed paths of ``contour_length`` paddles (6, 9 or 14 for difficulty easy, medium, hard; LRA
reports hard), short distractor paths of ``contour_length // 3`` paddles, and two round
markers. Label 1: both markers sit on the two ends of the same long path; label 0: one marker
on an end of each long path. Labels are exactly balanced and drawn independently of the
geometry, which is generated first.

Drawing (our vectorised version of the recipe, the same rules for a whole chunk of images at
once): a path starts at a random point in a random direction; each paddle turns by at most
``MAX_TURN`` and advances ``gap`` pixels unpainted then ``dash`` pixels painted, one pixel per
step (``dash = 2 s``, ``gap = s``, ``s = resolution / 32``). Every pixel of a path must keep a
Chebyshev distance > ``r = gap + 1`` from the other long path, from all markers and from the
long paths' neighbourhoods (distractors stop where they would come closer); a long path that
cannot continue rejects the image. So, on the image, pixels within distance ``r`` of each other
connect exactly the pixels of one path: a connectivity check with radius ``r`` recovers the
label (the tests do this).

Inputs are the image's pixels in row-major order as tokens 0-255 (255 = ink, 0 = background),
``vocab_size`` 256, length ``resolution**2``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

import datasets
import numpy as np
import pyarrow as pa

from seqlab.data.listops import cached
from seqlab.data.types import Split, TaskInfo

DIFFICULTY = {"easy": 6, "medium": 9, "hard": 14}  # paddles per long path
DEFAULT_SIZES = {"train": 160_000, "val": 20_000, "test": 20_000}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MAX_TURN = np.pi / 3  # largest direction change between consecutive paddles
TRIES = 8  # candidate turns per paddle (and start points per path)
LOOKAHEAD = 2  # paddles of straight room a candidate turn is scored by
CHUNK = 512  # images drawn per derived seed (fixed: results depend on the seed only)
INK = 255
GENERATOR_VERSION = 2  # bumped whenever the images for a given seed change


class Geometry:
    """Pixel sizes for a resolution: paddle dash/gap, connection radius, marker radius."""

    def __init__(self, resolution: int):
        if resolution < 16 or resolution % 16:
            raise ValueError(f"pathfinder: resolution must be a multiple of 16 (32 = "
                             f"Pathfinder, 128 = Path-X), got {resolution}")
        s = resolution // 32 if resolution >= 32 else 1
        self.size = resolution
        self.dash, self.gap = 2 * s, s
        self.radius = self.gap + 1  # pixels of one path are within this Chebyshev distance
        self.marker = 1 if s < 4 else 2  # marker: a (2m+1)-pixel wide disc


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Chebyshev dilation of ``mask [B, H, W]`` by ``r`` pixels (separable max filter)."""
    out = mask.copy()
    for axis in (1, 2):
        src, out = out, out.copy()
        for d in range(1, r + 1):
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(None, -d), slice(d, None)
            out[tuple(lo)] |= src[tuple(hi)]
            out[tuple(hi)] |= src[tuple(lo)]
    return out


def _disc(size: int, y: np.ndarray, x: np.ndarray, radius: int) -> np.ndarray:
    """Boolean ``[B, size, size]`` discs of ``radius`` (plus half a pixel) at (y, x)."""
    grid = np.arange(size)
    dy = grid[None, :, None] - y[:, None, None]
    dx = grid[None, None, :] - x[:, None, None]
    return dy**2 + dx**2 <= (radius + 0.5) ** 2


def _grow(rng: np.random.Generator, g: Geometry, forbidden: np.ndarray, growing: np.ndarray,
          pos: np.ndarray, angle: np.ndarray, n_paddles: int, painted: np.ndarray,
          footprint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extend a path by ``n_paddles`` paddles from ``pos [B, 2]`` heading ``angle [B]``.

    Paints into ``painted``/``footprint`` (``[B, H, W]``, in place). Returns (done [B]: all
    paddles drawn, end [B, 2]: the last painted pixel).
    """
    n = g.size
    pos, angle, growing = pos.astype(np.float64), angle.copy(), growing.copy()
    end = np.rint(pos).astype(np.int64)
    steps = np.arange(1, g.gap + g.dash + 1)
    paint = steps > g.gap
    ahead = np.arange(1, LOOKAHEAD * len(steps) + 1)
    for _ in range(n_paddles):
        rows = np.flatnonzero(growing)  # work only on the paths still growing
        heading = angle[rows, None] + rng.uniform(-MAX_TURN, MAX_TURN, (len(rows), TRIES))
        sin, cos = np.sin(heading)[..., None], np.cos(heading)[..., None]  # [G, K, 1]
        py = pos[rows, None, None, 0] + sin * steps  # [G, K, P]
        px = pos[rows, None, None, 1] + cos * steps
        iy, ix = np.rint(py).astype(np.int64), np.rint(px).astype(np.int64)
        inside = (iy >= 0) & (iy < n) & (ix >= 0) & (ix < n)
        hit = forbidden[rows[:, None, None], iy.clip(0, n - 1), ix.clip(0, n - 1)]
        valid = (inside & ~hit).all(-1)
        # Look ahead: how far each valid candidate could go straight on (up to LOOKAHEAD
        # paddles); take the first candidate with the most room, so paths avoid dead ends.
        qy = np.rint(py[..., -1:] + sin * ahead).astype(np.int64)
        qx = np.rint(px[..., -1:] + cos * ahead).astype(np.int64)
        clear = (qy >= 0) & (qy < n) & (qx >= 0) & (qx < n)
        clear &= ~forbidden[rows[:, None, None], qy.clip(0, n - 1), qx.clip(0, n - 1)]
        room = np.where(valid, np.cumprod(clear, -1).sum(-1), -1)
        moved = valid.any(1)
        growing[rows[~moved]] = False
        sel, k = np.flatnonzero(moved), room.argmax(1)[moved]
        rows = rows[moved]
        sy, sx = iy[sel, k], ix[sel, k]  # [G', P]
        footprint[rows[:, None], sy, sx] = True
        painted[rows[:, None], sy[:, paint], sx[:, paint]] = True
        end[rows] = np.stack([sy[:, -1], sx[:, -1]], 1)
        pos[rows] = np.stack([py[sel, k, -1], px[sel, k, -1]], 1)
        angle[rows] = heading[sel, k]
    return growing, end


def _path(rng: np.random.Generator, g: Geometry, forbidden: np.ndarray, active: np.ndarray,
          n_paddles: int, border: int):
    """Grow one path per image, all images at once, both ways from a free random point.

    The start is at least ``border`` pixels from the image's edges.
    forbidden: [B, H, W] pixels the path may not touch. active: [B] images that draw a path.
    Returns (painted [B, H, W], footprint [B, H, W]: painted or skipped, done [B]: started and
    drawn in full, started [B], end points [B, 2, 2]).
    """
    b, n = len(active), g.size
    rows = np.arange(b)
    cand = rng.integers(border, n - border, (b, TRIES, 2))
    free = ~forbidden[rows[:, None], cand[..., 0], cand[..., 1]]
    started = active & free.any(1)
    start = cand[rows, free.argmax(1)]
    painted = np.zeros((b, n, n), bool)
    painted[rows[started], start[started, 0], start[started, 1]] = True
    footprint = painted.copy()
    angle = rng.uniform(0, 2 * np.pi, b)
    first = n_paddles // 2
    done1, end1 = _grow(rng, g, forbidden, started, start, angle, first, painted, footprint)
    done2, end2 = _grow(rng, g, forbidden, started, start, angle + np.pi, n_paddles - first,
                        painted, footprint)
    return painted, footprint, done1 & done2, started, np.stack([end1, end2], 1)


def draw_chunk(rng: np.random.Generator, g: Geometry, n_images: int, contour_length: int,
               n_distractors: int):
    """Draw ``n_images`` candidate images; returns the accepted ones.

    Returns (images [M, H, W] uint8 without markers, markers [M, 4, 2] = path A start, A end,
    B start, B end, marker discs [M, 4, H, W] bool).
    """
    n = g.size
    active = np.ones(n_images, bool)
    none = np.zeros((n_images, n, n), bool)
    a, a_foot, ok, _, a_ends = _path(rng, g, none, active, contour_length, n // 4)
    discs = np.stack([_disc(n, a_ends[:, i, 0], a_ends[:, i, 1], g.marker) for i in (0, 1)], 1)
    forbidden = _dilate(a_foot | discs.any(1), g.radius)
    bb, b_foot, ok_b, _, b_ends = _path(rng, g, forbidden, ok, contour_length, n // 4)
    ok &= ok_b
    b_discs = np.stack([_disc(n, b_ends[:, i, 0], b_ends[:, i, 1], g.marker) for i in (0, 1)],
                       1)
    ok &= ~(b_discs.any(1) & forbidden).reshape(n_images, -1).any(1)
    discs = np.concatenate([discs, b_discs], 1)
    forbidden = _dilate(a_foot | b_foot | discs.any(1), g.radius)
    ink = a | bb
    for _ in range(n_distractors):
        ink |= _path(rng, g, forbidden, ok, max(2, contour_length // 3), g.marker)[0]
    markers = np.concatenate([a_ends, b_ends], 1)[ok]
    images = np.where(ink[ok], INK, 0).astype(np.uint8)
    return images, markers, discs[ok]


def draw_labelled(rng: np.random.Generator, g: Geometry, n_images: int, contour_length: int,
                  n_distractors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accepted images with their two markers painted in.

    Returns (images [M, H, W] uint8, labels [M], marker centres [M, 2, 2] as (row, col)).
    """
    images, markers, discs = draw_chunk(rng, g, n_images, contour_length, n_distractors)
    labels, chosen = choose_markers(rng, len(images))
    rows = np.arange(len(images))[:, None]
    images[discs[rows, chosen].any(1)] = INK
    return images, labels, markers[rows, chosen]


def _chunk(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The images ([M, H*W]) and labels of one derived seed (a process-pool job)."""
    seed, split, index, resolution, contour_length, n_distractors = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))
    images, labels, _ = draw_labelled(rng, Geometry(resolution), CHUNK, contour_length,
                                      n_distractors)
    return images.reshape(len(images), -1), labels


def choose_markers(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and which two of the 4 path ends carry markers ([m], [m, 2]).

    Label 1: both ends of path A (0, 1). Label 0: one end of A and one end of B (2 or 3).
    """
    labels = rng.permutation(np.arange(m) % 2)
    a_end = rng.integers(0, 2, m)
    b_end = 2 + rng.integers(0, 2, m)
    chosen = np.where(labels[:, None] == 1, np.array([0, 1]), np.stack([a_end, b_end], 1))
    return labels, chosen


def generate(split: str, size: int, *, resolution: int = 32, difficulty: str = "hard",
             n_distractors: int | None = None, seed: int = 0, workers: int | None = None,
             progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``size`` images ([size, resolution**2] uint8) and labels ([size] int64) of a split.

    workers: processes drawing chunks in parallel (default: the CPU count); the result does
    not depend on it.
    """
    if difficulty not in DIFFICULTY:
        raise ValueError(f"pathfinder: difficulty must be one of {', '.join(DIFFICULTY)}, got "
                         f"{difficulty!r}")
    g = Geometry(resolution)
    contour = DIFFICULTY[difficulty]
    scale = max(1, resolution // 32)
    n_distractors = 4 * scale if n_distractors is None else n_distractors
    workers = (os.cpu_count() or 1) if workers is None else workers
    images, labels, count = [], [], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, desc=f"pathfinder{resolution} {split}", unit="img")
    pool = None
    if workers > 1 and size > CHUNK:
        # fork is fastest but unsafe once JAX's threads run; spawn then (a script calling
        # this needs the usual ``if __name__ == "__main__":`` guard).
        safe_fork = "jax" not in sys.modules and sys.platform == "linux"
        pool = multiprocessing.get_context("fork" if safe_fork else "spawn").Pool(workers)
    try:
        index = 0
        while count < size:
            # A wave of chunks, enough for the rest if at least half the candidates are kept.
            wave = min(max(1, 2 * (size - count) // CHUNK + 1), 4 * workers)
            jobs = [(seed, split, i, g.size, contour, n_distractors)
                    for i in range(index, index + wave)]
            index += wave
            for chunk_images, chunk_labels in (pool.imap(_chunk, jobs) if pool else
                                               map(_chunk, jobs)):
                take = min(len(chunk_labels), size - count)
                images.append(chunk_images[:take])
                labels.append(chunk_labels[:take])
                count += take
                if bar is not None:
                    bar.update(take)
                if count == size:
                    break
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def pathfinder(split: str, root: str | None = None, *, size: int | None = None,
               resolution: int = 32, difficulty: str = "hard", n_distractors: int | None = None,
               seed: int = 0, workers: int | None = None) -> Split:
    """Pathfinder (resolution 32) or Path-X (resolution 128), generated once and cached.

    size: images in the split (default 160k / 20k / 20k). difficulty: easy | medium | hard
    (long paths of 6 / 9 / 14 paddles). root: cache directory (default: the HF datasets cache).
    """
    size = DEFAULT_SIZES[split] if size is None else size
    if size < 1:
        raise ValueError(f"pathfinder: size must be >= 1, got {size}")
    Geometry(resolution)
    key = dict(split=split, size=size, resolution=resolution, difficulty=difficulty,
               n_distractors=n_distractors, seed=seed, version=GENERATOR_VERSION)

    def build() -> datasets.Dataset:
        images, labels = generate(split, size, resolution=resolution, difficulty=difficulty,
                                  n_distractors=n_distractors, seed=seed, workers=workers,
                                  progress=size >= 5_000)
        inputs = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), images.shape[1])
        return datasets.Dataset(pa.table({"inputs": inputs, "label": pa.array(labels)}))

    info = TaskInfo(task="classify", n_classes=2, vocab_size=256, input_dim=None,
                    max_length=resolution**2)
    return Split(data=cached(f"pathfinder{resolution}", root, key, build), info=info)
