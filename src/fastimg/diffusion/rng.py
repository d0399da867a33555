"""Seeded Gaussian noise, bit-compatible with torch's CPU generator as diffusers uses it."""

import numpy as np

_BLOCK = 16


class TorchCompatibleGenerator:
    """Reproduces ``torch.Generator("cpu").manual_seed(seed)`` followed by ``torch.randn`` calls.

    torch seeds a standard mt19937 exactly as NumPy's legacy ``RandomState`` does, draws one 32-bit
    word per float32 element, keeps its low 24 bits as a uniform in [0, 1), and turns blocks of 16
    uniforms into normals by Box-Muller. Consecutive calls continue one stream, as in torch.
    """

    def __init__(self, seed: int):
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.seed = seed
        self._mt = np.random.RandomState(seed)

    def _uniform(self, n: int) -> np.ndarray:
        words = self._mt.randint(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
        return (words & np.uint32(2**24 - 1)).astype(np.float32) * np.float32(2.0**-24)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normal float32 array of ``shape``, the same values torch.randn gives."""
        n = int(np.prod(shape))
        if n < _BLOCK:
            raise ValueError(
                f"noise of {n} elements uses torch's scalar path, which is not reproduced; "
                f"fastimg needs at least {_BLOCK} (an image of at least 16x16 pixels)"
            )
        u = self._uniform(n)
        out = np.empty(n, dtype=np.float32)
        full = n - n % _BLOCK
        out[:full] = _box_muller(u[:full])
        if full != n:
            out[n - _BLOCK :] = _box_muller(self._uniform(_BLOCK))
        return out.reshape(shape)


def _box_muller(u: np.ndarray) -> np.ndarray:
    """torch's normal_fill_16 over consecutive blocks of 16 uniforms, in float32."""
    blocks = u.reshape(-1, 2, 8)
    radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - blocks[:, 0]))
    theta = np.float32(2.0 * np.pi) * blocks[:, 1]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).reshape(-1)


class StackedGenerators:
    """Several generators as one: `randn(shape)` draws each one's rows (`rows[k]` along the
    first axis) from generator k, in order, so that requests batched together get the noise
    each would get alone."""

    def __init__(self, generators: list, rows: list[int]):
        if len(generators) != len(rows):
            raise ValueError(f"{len(generators)} generators for {len(rows)} row counts")
        self.generators, self.rows = list(generators), list(rows)

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """Normal noise of `shape`, whose first axis is the sum of the rows."""
        shape = tuple(shape)
        if shape[0] != sum(self.rows):
            raise ValueError(f"noise of {shape[0]} rows asked for, the generators give {self.rows}")
        parts = [g.randn((n, *shape[1:])) for g, n in zip(self.generators, self.rows, strict=True)]
        return np.concatenate(parts)
