import numpy as np
import pytest

from fastimg.diffusion.rng import TorchCompatibleGenerator

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1])
def test_randn_matches_torch_cpu_generator_across_consecutive_calls(seed):
    g = torch.Generator("cpu").manual_seed(seed)
    ours = TorchCompatibleGenerator(seed)
    for shape in [(1, 4, 8, 8), (2, 4, 9, 7), (16,), (1, 4, 5, 5), (3, 4, 32, 32)]:
        expected = torch.randn(shape, generator=g).numpy()
        got = ours.randn(shape)
        assert got.dtype == np.float32 and got.shape == shape
        # same stream; Box-Muller's log/sin/cos may round differently by a few ulp
        np.testing.assert_allclose(got, expected, rtol=0, atol=8 * np.finfo(np.float32).eps)


def test_randn_refuses_shapes_that_take_torchs_scalar_path():
    with pytest.raises(ValueError, match="at least 16"):
        TorchCompatibleGenerator(0).randn((1, 4, 1, 1))


def test_seed_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        TorchCompatibleGenerator(-1)


def test_stacked_generators_give_each_request_its_own_stream():
    from fastimg.diffusion.rng import StackedGenerators, TorchCompatibleGenerator

    stacked = StackedGenerators([TorchCompatibleGenerator(s) for s in (1, 2)], [1, 3])
    alone = [TorchCompatibleGenerator(1), TorchCompatibleGenerator(2)]
    for _ in range(2):  # consecutive draws continue each stream
        got = stacked.randn((4, 4, 3, 5))
        want = np.concatenate([alone[0].randn((1, 4, 3, 5)), alone[1].randn((3, 4, 3, 5))])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="rows"):
        stacked.randn((3, 4, 3, 5))
