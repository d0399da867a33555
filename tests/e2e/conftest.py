"""Fixtures the parity tests share."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def control_image():
    """A deterministic edge-like image of the photo's size (floored alike to 88 x 64): the
    ControlNet parity tests' control image."""
    lines = (np.random.default_rng(5).random((68, 90)) > 0.85).astype(np.uint8) * 255
    return Image.fromarray(np.stack([lines] * 3, axis=-1))
