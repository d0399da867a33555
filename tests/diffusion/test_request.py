import numpy as np
import pytest

from fastimg.diffusion.request import finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finite_finds_one_nan_or_inf_anywhere(bad):
    array = np.random.default_rng(0).standard_normal((1, 3, 16, 24)).astype(np.float32)
    assert bool(finite(array)) and finite(array).shape == ()
    array[0, 2, 15, 23] = bad
    assert not bool(finite(array))
