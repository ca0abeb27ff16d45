"""Pathfinder: labels agree with a connectivity check on the image; balance; determinism."""

import numpy as np
import pytest

from seqlab.data import Loader, load
from seqlab.data.pathfinder import DIFFICULTY, Geometry, draw_labelled, generate


def components(ink: np.ndarray, radius: int) -> np.ndarray:
    """Connected components of ``ink [B, H, W]`` where pixels within Chebyshev ``radius`` touch.

    Min-label propagation: every ink pixel repeatedly takes the smallest label in its window.
    """
    b, h, w = ink.shape
    big = h * w
    labels = np.where(ink, np.arange(h * w).reshape(1, h, w), big)
    while True:
        padded = np.pad(labels, ((0, 0), (radius, radius), (radius, radius)),
                        constant_values=big)
        window = np.full_like(labels, big)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                window = np.minimum(window, padded[:, dy:dy + h, dx:dx + w])
        new = np.where(ink, window, big)
        if np.array_equal(new, labels):
            return labels
        labels = new


@pytest.mark.parametrize("resolution, difficulty, n", [(32, "hard", 256), (32, "easy", 128),
                                                       (128, "hard", 48)])
def test_labels_match_connectivity(resolution, difficulty, n):
    g = Geometry(resolution)
    rng = np.random.default_rng(7)
    images, labels, markers = draw_labelled(rng, g, n, DIFFICULTY[difficulty],
                                            4 * max(1, resolution // 32))
    assert len(images) >= 10 and images.shape[1:] == (resolution, resolution)
    assert set(np.unique(images)) <= {0, 255}
    comp = components(images == 255, g.radius)
    rows = np.arange(len(images))
    first = comp[rows, markers[:, 0, 0], markers[:, 0, 1]]
    second = comp[rows, markers[:, 1, 0], markers[:, 1, 1]]
    assert (first < resolution**2).all() and (second < resolution**2).all()  # markers are ink
    np.testing.assert_array_equal((first == second).astype(int), labels)
    assert 0 < labels.mean() < 1
    # Hard images hold a lot of ink: several paths (two long ones plus distractors).
    counts = [len(np.unique(c[c < resolution**2])) for c in comp]
    assert np.mean(counts) >= 3


def test_balanced_deterministic_and_sizes(tmp_path):
    x, y = generate("train", 700, seed=1, workers=1)
    assert x.shape == (700, 1024) and x.dtype == np.uint8
    assert abs(y.mean() - 0.5) < 0.03
    x2, y2 = generate("train", 300, seed=1, workers=1)
    np.testing.assert_array_equal(x[:300], x2)  # deterministic; a smaller size is a prefix
    np.testing.assert_array_equal(y[:300], y2)
    x3, _ = generate("val", 50, seed=1, workers=1)
    assert not {r.tobytes() for r in x3} & {r.tobytes() for r in x}
    split = load("pathfinder", "test", root=str(tmp_path), size=40)
    assert len(split) == 40 and split.info.max_length == 1024 and split.info.vocab_size == 256
    batch = next(iter(Loader(split, 8)))
    assert batch["inputs"].shape == (8, 1024) and batch["mask"].all()
    cached = load("pathfinder", "test", root=str(tmp_path), size=40)
    np.testing.assert_array_equal(np.asarray(cached.data["label"]),
                                  np.asarray(split.data["label"]))


def test_parallel_generation_matches_serial():
    a, ya = generate("train", 600, seed=2, workers=1)
    b, yb = generate("train", 600, seed=2, workers=2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        load("pathfinder", "train", root=str(tmp_path), size=4, resolution=30)
    with pytest.raises(ValueError, match="difficulty"):
        generate("train", 4, difficulty="extreme")
