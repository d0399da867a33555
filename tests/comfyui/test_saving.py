import json

import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui.saving import save_batch
from fastimg.errors import InputError

from .conftest import comfy_image

LABELS = {"fastimg:prompt": "a red barn", "fastimg:seed": 42, "fastimg:strength": 0.6,
          "fastimg:steps": 4, "fastimg:guidance": 5.0,
          "fastimg:scheduler": "euler"}  # fmt: skip


def test_saved_pngs_carry_fastimgs_labels_and_comfyuis_workflow(torch, tmp_path):
    picture = Image.fromarray(np.full((8, 8, 3), 90, np.uint8))
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
    workflow = {"nodes": [], "links": []}
    (saved,) = save_batch(comfy_image([picture], torch), [LABELS], "out", prompt,
                          {"workflow": workflow}, output_dir=str(tmp_path))  # fmt: skip
    assert saved == {"filename": "out_00001_.png", "subfolder": "", "type": "output"}
    written = Image.open(tmp_path / saved["filename"])
    assert np.array_equal(np.asarray(written), np.asarray(picture))
    assert "Seed: 42" in written.info["parameters"]
    assert "trainedAlgorithmicMedia" in written.info["XML:com.adobe.xmp"]
    assert json.loads(written.info["prompt"]) == prompt
    assert json.loads(written.info["workflow"]) == workflow


def test_labels_must_come_from_the_node_that_made_the_images(torch, tmp_path):
    picture = Image.new("RGB", (8, 8))
    with pytest.raises(InputError, match="connect the labels output"):
        save_batch(comfy_image([picture, picture], torch), [LABELS], "x", output_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())
