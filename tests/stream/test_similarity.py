import random

import numpy as np
import pytest

from fastimg.stream.similarity import SimilarityFilter, cosine, skip_probability


def test_skip_probability_is_streamdiffusions():
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(0.5, 0.98) == 0.0
    assert skip_probability(1.0, 0.98) == pytest.approx(1.0)
    assert skip_probability(1.0, 1.0) == 0.0  # a threshold of 1 never skips


def test_cosine_of_flat_arrays():
    a = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def reference(frames, threshold, max_skip, seed):
    """StreamDiffusion's SimilarImageFilter decisions with its max_skip_frame, one uniform draw
    of a seeded RNG per frame after the first; a frame that runs is the next one compared."""
    rng, last, row, skips = random.Random(seed), None, 0, []
    for x in frames:
        if last is None:
            last = x
            skips.append(False)
            continue
        sim = float(np.dot(last.ravel(), x.ravel()) / np.linalg.norm(last) / np.linalg.norm(x))
        p = max(0.0, 1 - (1 - sim) / (1 - threshold))
        if not p < rng.uniform(0, 1) and row < max_skip:
            row += 1
            skips.append(True)
        else:
            last, row = x, 0
            skips.append(False)
    return skips


def test_skips_follow_the_seeded_probability():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(300)
    frames = [base + rng.standard_normal(300) * rng.uniform(0, 0.3) for _ in range(200)]
    filt = SimilarityFilter(0.98, 3, seed=42)
    got = [filt.skip(frame) for frame in frames]
    assert got == reference(frames, 0.98, 3, 42)
    assert 0 < sum(got) < len(got)  # some skipped, some not: the draws decided
    assert max(len(run) for run in "".join("s" if g else "." for g in got).split(".")) <= 3
