"""control_preprocess depth: the engine folder's depth model against transformers' own
depth-estimation pipeline (as diffusers' depth ControlNet examples run it), the resize against
torch's bicubic interpolation, and the refusals."""

import numpy as np
import pytest
from PIL import Image

from fastimg.diffusion import depth
from fastimg.errors import InputError
from fastimg.settings import CallSettings


@pytest.mark.parametrize(
    "size,source", [((64, 88), (16, 16)), ((7, 5), (12, 9)), ((40, 40), (40, 40))]
)
def test_resize_bicubic_is_torchs_bicubic_interpolation(size, source):
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).random(source, dtype=np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(values)[None, None], size=size, mode="bicubic", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(depth.resize_bicubic(values, *size), expected, atol=1e-5)


def test_the_depth_map_is_transformers_depth_estimation_pipelines(tiny_controlnet_depth, photo):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    from fastimg import Img2ImgPipeline

    folder = tiny_controlnet_depth[0].parent / "depth"
    estimator = transformers.pipeline(
        "depth-estimation",
        model=transformers.DPTForDepthEstimation.from_pretrained(folder),
        image_processor=DPTImageProcessorPil.from_pretrained(folder),
    )
    expected = np.asarray(estimator(photo)["depth"])
    for backend in ("onnxruntime", "openvino"):
        pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend=backend,
                                            precision="fp32")  # fmt: skip
        made = np.asarray(depth.depth_image(photo, pipe.engines))
        assert made.shape == (*expected.shape, 3) and (made[..., 0] == made[..., 2]).all()
        assert np.abs(made[..., 0].astype(int) - expected).max() <= 1, backend
        assert expected.std() > 10  # (a map that varies: not a flat image)


def test_control_preprocess_depth_steers_with_the_depth_map(tiny_controlnet_depth, photo):
    from fastimg import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_controlnet_depth[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    common = {"prompt": "a fox", "image": photo, "num_inference_steps": 3, "seed": 3}
    (made,) = pipe(**common, control_preprocess="depth")
    size = made.size
    (given,) = pipe(**common, control_image=depth.depth_image(photo.resize(size, Image.LANCZOS),
                                                              pipe.engines))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(made), np.asarray(given))
    assert made.info["fastimg:control_preprocess"] == "depth"
    (plain,) = pipe(**common)
    assert not np.array_equal(np.asarray(made), np.asarray(plain))


def test_depth_needs_a_depth_model_in_the_folder(tiny_controlnet):
    from fastimg.diffusion.control import check_settings
    from fastimg.engine_folder.manifest import load_manifest

    manifest = load_manifest(tiny_controlnet[1])
    with pytest.raises(InputError) as caught:
        check_settings(manifest, CallSettings(prompt="p", control_preprocess="depth"))
    message = str(caught.value)
    assert "control_preprocess depth needs a depth model, and the engine folder" in message
    assert "--depth-model Intel/dpt-large" in message and "\n" not in message


def test_transform_with_depth_on_a_folder_without_a_depth_model_is_one_line(
    tiny_controlnet, photo, tmp_path
):
    from click.testing import CliRunner

    from fastimg.cli.main import cli

    photo.save(tmp_path / "in.png")
    args = ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_controlnet[1]),
            "--prompt", "a fox", "--control-preprocess", "depth",
            "-o", str(tmp_path / "o.png")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "control_preprocess depth needs a depth model" in line and "--depth-model" in line
    assert not (tmp_path / "o.png").exists()
