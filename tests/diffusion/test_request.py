import numpy as np
import pytest

from fastimg.diffusion.request import finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_finite_finds_one_nan_or_inf_anywhere(bad):
    array = np.random.default_rng(0).standard_normal((1, 3, 16, 24)).astype(np.float32)
    assert bool(finite(array)) and finite(array).shape == ()
    array[0, 2, 15, 23] = bad
    assert not bool(finite(array))


@pytest.mark.parametrize(
    "precision,fix",
    [
        ("bf16", "run with --precision fp32 (the exact path)"),
        ("fp16", "export them again without it first"),  # fp32 is refused on those folders
        ("fp32", "the engine overflowed even in fp32"),
    ],
)
def test_a_nan_names_the_fix_for_its_precision(precision, fix):
    from fastimg.backends import Engines
    from fastimg.diffusion.request import nan_error

    error = str(nan_error("VAE encoder", Engines("onnxruntime", precision, {})))
    assert error.startswith(f"NaN or Inf appeared in the VAE encoder on onnxruntime ({precision})")
    assert fix in error
