"""SDXL-Turbo at full size (2.6 B-parameter UNet) against diffusers (slow: a 14 GB export).

python -m pytest -m slow tests/e2e/test_parity_sdxl_slow.py

It takes the random-weight model models/sdxl-turbo where the bench made it (else builds one) and
always exports its own engines from it with this code, in a temporary folder: an engine folder
found on disk may have been exported by older code. Ours runs first and is freed before diffusers
loads: the two do not fit in 24 GiB together.
"""

import gc
from pathlib import Path

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow

SETTINGS = dict(prompt="a fox in the snow", num_inference_steps=2, strength=0.5)


@pytest.fixture(scope="module")
def sdxl_turbo(tmp_path_factory):
    model = Path("models/sdxl-turbo")
    if not (model / "model_index.json").is_file():
        from tests.conftest import _build

        return _build(tmp_path_factory, "sdxl-turbo")
    from fastimg_export.engine_writer import export_engines

    engines = tmp_path_factory.mktemp("sdxl-turbo") / "engines"
    return model, export_engines(str(model), engines, log=lambda m: None)


@pytest.mark.parametrize("guidance,negative", [(0.0, None), (2.0, "blurry")])
def test_sdxl_turbo_at_full_size_matches_diffusers(sdxl_turbo, photo, guidance, negative):
    model, engines = sdxl_turbo
    image = photo.resize((512, 384))
    settings = dict(guidance_scale=guidance, negative_prompt=negative, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    got = pipe(image=image, seed=3, scheduler="euler_a", **settings)[0]
    del pipe
    gc.collect()
    ref = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(str(model))
    ref.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(3)
    expected = ref(image=image, generator=generator, **settings).images[0]
    assert expected.size == got.size == (512, 384)
    assert psnr(expected, got) >= 40.0, psnr(expected, got)
