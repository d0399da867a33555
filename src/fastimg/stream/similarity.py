"""StreamDiffusion's stochastic similarity filter: a frame much like the last one processed is
skipped with a probability that grows with their cosine similarity."""

import random

import numpy as np

EPS = 1e-6  # torch.nn.CosineSimilarity's default, as StreamDiffusion's SimilarImageFilter


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays taken flat (each norm floored at EPS)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (max(np.linalg.norm(a), EPS) * max(np.linalg.norm(b), EPS)))


def skip_probability(similarity: float, threshold: float) -> float:
    """max(0, 1 - (1 - similarity) / (1 - threshold)); 0 for a threshold of 1 or more."""
    if threshold >= 1:
        return 0.0
    return max(0.0, 1.0 - (1.0 - similarity) / (1.0 - threshold))


class SimilarityFilter:
    """Decides frame by frame whether to skip, from a seeded RNG: one uniform draw per frame
    after the first, a skip where the draw is at most the skip probability, never more than
    `max_skip` skips in a row (then the frame runs anyway)."""

    def __init__(self, threshold: float, max_skip: int, seed: int):
        self.threshold, self.max_skip = threshold, max_skip
        self.rng = random.Random(seed)
        self.last: np.ndarray | None = None  # the pixels of the last frame processed
        self.skipped = 0  # skips in a row so far

    def skip(self, pixels: np.ndarray) -> bool:
        """Whether the frame `pixels` is skipped; a frame that is not becomes the one compared."""
        if self.last is not None:
            p = skip_probability(cosine(self.last, pixels), self.threshold)
            draw = self.rng.uniform(0, 1)
            if p >= draw and self.skipped < self.max_skip:
                self.skipped += 1
                return True
        self.last, self.skipped = pixels, 0
        return False
