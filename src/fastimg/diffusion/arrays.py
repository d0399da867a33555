"""One code path for CPU and GPU arrays: NumPy, or CuPy when the engines run on a CUDA device.

The samplers and the pipeline's glue only use operations both libraries share (arithmetic,
concatenate, split, clip, exp, isfinite), picked through `namespace(device)`.
"""

import numpy as np

from ..errors import require


def namespace(device: str):
    """The array module for a device: numpy for 'cpu', cupy for 'cuda'."""
    if device == "cpu":
        return np
    return require("cupy", "gpu")


def to_host(array) -> np.ndarray:
    """A NumPy copy of a NumPy or CuPy array (the one synchronizing point, outside loops)."""
    return array.get() if hasattr(array, "get") and not isinstance(array, np.ndarray) else array


class PredrawnNoise:
    """The generator's next draws, taken up front on the host and moved to the device at once.

    Samplers call randn(shape) inside their loop; on a GPU each call would otherwise be a host
    draw and a copy. The draws happen in the same order as they would in the loop, so the
    stream (and the image) is identical to the CPU path.
    """

    def __init__(self, rng, shape: tuple[int, ...], count: int, xp):
        self._noise = (
            xp.asarray(np.stack([rng.randn(shape) for _ in range(count)])) if count else None
        )
        self._next = 0

    def randn(self, shape: tuple[int, ...]):
        """The next pre-drawn noise tensor (its shape was fixed when drawing)."""
        if self._noise is None or self._next >= len(self._noise):
            raise RuntimeError("the sampler drew more noise than its plan said it would")
        noise = self._noise[self._next]
        if tuple(noise.shape) != tuple(shape):
            raise RuntimeError(f"noise of shape {shape} asked for, {noise.shape} drawn")
        self._next += 1
        return noise
