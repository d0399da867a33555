import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui.tensors import to_image_batch, to_pil_images, to_pil_masks
from fastimg.errors import InputError

from .conftest import comfy_image


def _pictures(*sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def test_load_images_tensor_gives_back_its_8_bit_pixels_exactly(torch):
    pictures = _pictures((24, 16), (24, 16))
    back = to_pil_images(comfy_image(pictures, torch))
    assert [b.mode for b in back] == ["RGB", "RGB"]
    for picture, image in zip(pictures, back, strict=True):
        assert np.array_equal(np.asarray(picture), np.asarray(image))


def test_outputs_are_comfyuis_image_and_its_save_node_reads_the_same_pixels(torch):
    pictures = _pictures((8, 16), (8, 16), seed=1)
    batch = to_image_batch(pictures)
    assert isinstance(batch, torch.Tensor)
    assert batch.dtype == torch.float32 and tuple(batch.shape) == (2, 16, 8, 3)
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    for picture, tensor in zip(pictures, batch, strict=True):
        saved = np.clip(255.0 * tensor.cpu().numpy(), 0, 255).astype(np.uint8)  # SaveImage's
        assert np.array_equal(saved, np.asarray(picture))


def test_a_list_of_batches_of_one_size_is_one_list_of_images(torch):
    first, second = _pictures((8, 8), (8, 8), seed=2)
    images = to_pil_images([comfy_image([first], torch), comfy_image([second], torch)])
    assert len(images) == 2


def test_images_of_mixed_sizes_are_refused_with_one_line(torch):
    small, large = _pictures((8, 8), (16, 8))
    with pytest.raises(InputError, match=r"mixes sizes \(8x8, 16x8\)") as refused:
        to_pil_images([comfy_image([small], torch), comfy_image([large], torch)])
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("shape", [(8,), (2, 3, 8, 8, 3), (1, 8, 8, 2), (0, 8, 8, 3)])
def test_what_is_not_an_image_tensor_is_refused(torch, shape):
    with pytest.raises(InputError, match="not a ComfyUI IMAGE"):
        to_pil_images(torch.zeros(shape))


def test_nan_values_are_refused(torch):
    image = torch.zeros((1, 8, 8, 3))
    image[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="not finite"):
        to_pil_images(image)


def test_an_alpha_channel_goes_onto_white_as_fastimg_reads_rgba_files(torch):
    rgba = torch.zeros((1, 4, 4, 4))  # black, fully transparent
    (image,) = to_pil_images(rgba)
    assert np.asarray(image).min() == 255


def test_a_mask_is_white_where_comfyui_masks_and_must_match_the_image(torch):
    mask = torch.zeros((2, 8, 16))
    mask[0, :, :8] = 1.0
    first, second = to_pil_masks(mask, (16, 8))
    assert first.mode == "L" and first.size == (16, 8)
    assert np.asarray(first)[:, :8].min() == 255 and np.asarray(first)[:, 8:].max() == 0
    assert np.asarray(second).max() == 0
    assert len(to_pil_masks(mask[0], (16, 8))) == 1  # a mask without its batch axis
    with pytest.raises(InputError, match="the mask is 16x8 but the image is 8x8"):
        to_pil_masks(mask, (8, 8))


def test_the_node_package_imports_without_torch():
    code = (
        "import sys, fastimg.comfyui\n"
        "assert set(fastimg.comfyui.NODE_CLASS_MAPPINGS) == "
        "set(fastimg.comfyui.NODE_DISPLAY_NAME_MAPPINGS)\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
