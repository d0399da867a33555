"""fastimg's SDXL ControlNet img2img against diffusers' StableDiffusionXLControlNetImg2ImgPipeline,
same seed, same settings, on tiny-sdxl-controlnet (its ControlNet takes text_embeds and
time_ids; random, non-zero zero convolutions)."""

import pytest
from PIL import Image

from fastimg.diffusion import schedules
from fastimg.media.images import psnr

from .test_parity import MIN_PSNR, OPENVINO, exact, record, reference, run_reference

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["onnxruntime", pytest.param("openvino", marks=OPENVINO)])
def pair(request, tiny_sdxl_controlnet):
    model, engines = tiny_sdxl_controlnet
    ref = reference(model)
    assert type(ref).__name__ == "StableDiffusionXLControlNetImg2ImgPipeline"
    return request.param, ref, dict(ref.scheduler.config), exact(engines, request.param)


def compare(pair, photo, control_image, sampler="euler", seed=11, **settings) -> None:
    """Both pipelines on the same settings: every image matches, and the ControlNet moved it."""
    backend, ref, config, ours = pair
    settings = {"prompt": "a red fox in the snow", "num_inference_steps": 6, **settings}
    expected = run_reference(ref, config, sampler, photo, seed=seed, control_image=control_image,
                             **settings)  # fmt: skip
    got = ours(image=photo, seed=seed, scheduler=sampler, control_image=control_image, **settings)
    plain_settings = {k: v for k, v in settings.items() if not k.startswith("control")}
    plain = ours(image=photo, seed=seed, scheduler=sampler, **plain_settings)
    assert len(got) == len(expected)
    for e, g, p in zip(expected, got, plain, strict=True):
        assert g.size == e.size == (88, 64)
        record(model="tiny-sdxl-controlnet", backend=backend, sampler=sampler,
               psnr_db=psnr(e, g), control_effect_db=psnr(g, p), **settings)  # fmt: skip
        print(f"{backend} {sampler} {settings}: {psnr(e, g):.1f} dB against diffusers, "
              f"{psnr(g, p):.1f} dB against no control")  # fmt: skip
        assert psnr(e, g) >= MIN_PSNR, psnr(e, g)
        assert psnr(g, p) < MIN_PSNR - 5  # the ControlNet moved the image: not vacuous


@pytest.mark.parametrize("sampler", schedules.SAMPLERS)
def test_every_sampler_matches_diffusers(pair, photo, control_image, sampler):
    compare(pair, photo, control_image, sampler, strength=0.6, guidance_scale=5.0,
            num_images_per_prompt=2)  # fmt: skip


@pytest.mark.parametrize("guidance", [1.0, 5.0])
@pytest.mark.parametrize("scale,start,end", [(0.0, 0.0, 1.0), (1.5, 0.2, 0.7), (2.0, 0.0, 0.5)])
def test_scales_and_windows_match_diffusers(pair, photo, control_image, guidance, scale, start,
                                            end):  # fmt: skip
    control = dict(controlnet_conditioning_scale=scale, control_guidance_start=start,
                   control_guidance_end=end)  # fmt: skip
    if scale == 0.0:  # the plain UNet: diffusers' zero residuals change nothing either
        backend, ref, config, ours = pair
        settings = dict(prompt="a fox", num_inference_steps=6, guidance_scale=guidance,
                        control_image=control_image, **control)  # fmt: skip
        expected = run_reference(ref, config, "ddim", photo, seed=3, **settings)
        got = ours(image=photo, seed=3, scheduler="ddim", **settings)
        assert psnr(expected[0], got[0]) >= MIN_PSNR
        return
    compare(pair, photo, control_image, "ddim", guidance_scale=guidance, **control)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_strength_one_matches_diffusers(pair, photo, control_image, guidance):
    compare(pair, photo, control_image, "euler", strength=1.0, guidance_scale=guidance)


@pytest.fixture(scope="module")
def two_controlnets(tiny_sdxl_controlnet, tmp_path_factory):
    """tiny-sdxl-controlnet exported with a second random SDXL ControlNet (--controlnet), and
    diffusers' pipeline holding both as a MultiControlNetModel."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from fastimg_export.engine_writer import export_engines
    from fastimg_export.random_controlnets import random_controlnet

    model = tiny_sdxl_controlnet[0]
    root = tmp_path_factory.mktemp("tiny-sdxl-two-controlnets")
    ref = reference(model)
    second = random_controlnet(ref.unet, seed=9)
    second.save_pretrained(root / "second")
    engines = export_engines(str(model), root / "engines", log=lambda m: None,
                             controlnets=[str(root / "second")])  # fmt: skip
    ref.controlnet = MultiControlNetModel([ref.controlnet, second]).eval()
    return ref, dict(ref.scheduler.config), exact(engines)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_two_controlnets_match_diffusers_multi_controlnet(two_controlnets, photo, control_image,
                                                          guidance):  # fmt: skip
    ref, config, ours = two_controlnets
    second = control_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    control = dict(control_image=[control_image, second], controlnet_conditioning_scale=[0.5, 1.5],
                   control_guidance_start=[0.0, 0.2], control_guidance_end=[1.0, 0.7])  # fmt: skip
    settings = dict(prompt="a red fox in the snow", num_inference_steps=6, guidance_scale=guidance)
    (expected,) = run_reference(ref, config, "euler", photo, seed=11, **control, **settings)
    (got,) = ours(image=photo, seed=11, scheduler="euler", **control, **settings)
    one = {key: value[:1] for key, value in control.items()}  # the first ControlNet alone
    (first,) = ours(image=photo, seed=11, scheduler="euler", **one, **settings)
    record(model="tiny-sdxl-controlnet x2", backend="onnxruntime", guidance=guidance,
           psnr_db=psnr(expected, got), second_effect_db=psnr(got, first))  # fmt: skip
    print(f"two SDXL ControlNets, cfg {guidance}: {psnr(expected, got):.1f} dB against diffusers, "
          f"{psnr(got, first):.1f} dB against the first alone")  # fmt: skip
    assert psnr(expected, got) >= MIN_PSNR
    assert psnr(got, first) < MIN_PSNR - 5  # the second ControlNet moved the image
