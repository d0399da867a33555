import pytest

from fastimg.diffusion.tokenizer import PromptTokenizer
from fastimg.engine_folder.manifest import load_manifest

PROMPTS = [
    "",
    "a photo of a cat",
    "A Watercolor   painting,\tof a MOUNTAIN!!",
    "ünïcödé 日本語のテキスト и кириллица 🙂",
    " ".join(["a cozy living room with plants"] * 30),
]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_v"])
def test_ids_equal_transformers_clip_tokenizer(request, fixture):
    transformers = pytest.importorskip("transformers")
    model, engines = request.getfixturevalue(fixture)
    reference = transformers.CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    got = PromptTokenizer(load_manifest(engines))(PROMPTS)
    assert got.shape == (len(PROMPTS), 77)
    assert got.tolist() == expected
