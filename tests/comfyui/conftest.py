import pytest


@pytest.fixture(autouse=True)
def _no_loaded_engines():
    """Each test starts and ends with no pipeline in the nodes' cache."""
    from fastimg.comfyui.engines import forget_all

    forget_all()
    yield
    forget_all()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def comfy_image(pictures, torch):
    """The IMAGE tensor ComfyUI's Load Image makes of PIL pictures (8 bits / 255, float32)."""
    import numpy as np

    arrays = [np.asarray(p.convert("RGB")).astype(np.float32) / 255.0 for p in pictures]
    return torch.from_numpy(np.stack(arrays))
