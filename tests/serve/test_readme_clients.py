"""The README's A1111 and OpenAI snippets run as a user types them, against a live server on the
tiny model (only the address differs: the test's server has a port of its own)."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("webuiapi")
pytest.importorskip("openai")

from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import live, ready  # noqa: E402

README = Path(__file__).parents[2] / "README.md"


def section() -> str:
    return README.read_text().split("### A1111 and OpenAI clients")[1].split("\n### ")[0]


@pytest.fixture(scope="module")
def port(tiny):
    options = ServeOptions(engines=tiny[1], backend="onnxruntime", precision="fp32")
    with live(options) as (client, _):
        ready(client)
        yield client.base_url.port


def test_the_plugins_address_is_the_servers_root():
    text = section()
    assert "fastimg serve engines/sd15 --port 8000" in text
    assert re.findall(r"```text\n(.*?)\n```", text, re.S) == ["http://127.0.0.1:8000"]


@pytest.mark.parametrize("client", ["webuiapi", "openai"])
def test_the_snippet_runs_as_typed(port, photo, tmp_path, monkeypatch, client):
    (snippet,) = [code for code in re.findall(r"```python\n(.*?)```", section(), re.S)
                  if f"import {client}" in code or f"from {client} " in code]  # fmt: skip
    assert "8000" in snippet
    snippet = snippet.replace("port=8000", f"port={port}").replace(":8000/", f":{port}/")
    monkeypatch.chdir(tmp_path)
    photo.save("photo.jpg")
    exec(compile(snippet, f"README ({client})", "exec"), {})
    with Image.open("out.png") as out:
        assert out.size[0] % 8 == 0 and np.asarray(out).std() > 0
    if client == "webuiapi":
        return  # (its PIL image, saved by Pillow, keeps no labels; its JSON's PNG has them)
    labels = read_labels(tmp_path / "out.png")  # (the PNG as the server sent it)
    assert labels["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert "Seed: 42" in labels["parameters"] and "Denoising strength: 0.5" in labels["parameters"]
