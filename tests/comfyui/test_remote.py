import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui.nodes import Img2Img, LoadEngines
from fastimg.comfyui.saving import save_batch
from fastimg.errors import EngineError, InputError

from .conftest import comfy_image

pytest.importorskip("fastapi")

CALL = {"prompt": "a red barn", "negative_prompt": "blurry", "strength": 0.6, "steps": 4,
        "guidance": 5.0, "sampler": "euler", "seed": 42}  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.serve import ServeOptions
    from tests.serve.harness import live, ready

    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", precision="fp32")
    with live(ServeOptions(), lambda: pipe) as (client, _):
        ready(client)
        yield str(client.base_url)


def test_a_fastimg_server_gives_the_image_the_engines_give_in_comfyui(
    server, tiny, torch, tmp_path
):
    rng = np.random.default_rng(9)
    picture = Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
    image = comfy_image([picture], torch)
    (remote,) = LoadEngines().load("", "auto", "auto", server_url=server)
    (local,) = LoadEngines().load(str(tiny[1]), "onnxruntime", "fp32")
    from_server, labels = Img2Img().transform(remote, image, **CALL)
    in_process, _ = Img2Img().transform(local, image, **CALL)
    assert np.array_equal(from_server.numpy(), in_process.numpy())
    assert labels[0]["fastimg:seed"] == "42"  # as the server's PNG text carries it
    assert labels[0]["fastimg:server"] == server.rstrip("/")
    (saved,) = save_batch(from_server, labels, "remote", output_dir=str(tmp_path))
    written = Image.open(tmp_path / saved["filename"]).info["parameters"]
    assert written.splitlines()[-1] == labels[0]["parameters"].splitlines()[-1]


def test_a_refusal_or_no_server_is_fastimgs_one_line(server, torch):
    picture = comfy_image([Image.new("RGB", (32, 40))], torch)
    (remote,) = LoadEngines().load("", "auto", "auto", server_url=server)
    with pytest.raises(InputError, match="refused the image: ") as refused:
        Img2Img().transform(remote, picture, **{**CALL, "prompt": "x" * 100_000})
    assert "\n" not in str(refused.value)
    (nobody,) = LoadEngines().load("", "auto", "auto", server_url="http://127.0.0.1:9")
    with pytest.raises(EngineError, match="cannot reach the fastimg server"):
        Img2Img().transform(nobody, picture, **CALL)
