"""Parity on the full-size SD 1.5 architecture (860 M-parameter UNet, random weights).

Slow (an export of about 4 GB): run with  python -m pytest -m slow tests/e2e/test_parity_sd15.py
"""

import json
import os

import numpy as np
import pytest

from fastimg import schedules
from fastimg.pipeline import Img2ImgPipeline
from tests.conftest import psnr
from tests.e2e.test_parity import MIN_PSNR, reference, run_reference

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

RESULTS = os.environ.get("FASTIMG_PARITY_RESULTS")  # optional JSON-lines file of the figures


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_models import write_random_model

    root = tmp_path_factory.mktemp("sd15")
    model = write_random_model("sd15", root / "model")
    engines = export_engines(str(model), root / "engines", log=print)
    ref = reference(model)
    return ref, dict(ref.scheduler.config), Img2ImgPipeline.from_engines(engines)


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_sd15_output_matches_diffusers(sd15, photo, sampler, guidance, strength):
    ref, config, ours = sd15
    settings = dict(
        prompt="a red fox in the snow",
        strength=strength,
        num_inference_steps=10,
        guidance_scale=guidance,
        negative_prompt="blurry",
    )
    expected = run_reference(ref, config, sampler, photo, seed=11, **settings)[0]
    got = ours(image=photo, seed=11, scheduler=sampler, **settings)[0]
    value = psnr(expected, got)
    if RESULTS:
        diff = int(np.abs(np.asarray(expected, dtype=int) - np.asarray(got)).max())
        row = dict(
            model="sd15",
            sampler=sampler,
            guidance=guidance,
            strength=strength,
            psnr_db=value,
            max_pixel_diff=diff,
        )
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
    assert got.size == (88, 64)
    assert value >= MIN_PSNR
    assert np.asarray(got).std() > 10
