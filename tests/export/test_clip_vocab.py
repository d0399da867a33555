import json

import pytest

from fastimg_export import clip_vocab


def test_vocab_has_clip_alphabet_merges_and_special_tokens(tmp_path):
    size = clip_vocab.write_vocab(tmp_path, num_merges=50)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == size == 512 + 50 + 2
    assert vocab["<|endoftext|>"] == size - 1 and vocab["<|startoftext|>"] == size - 2
    assert "a</w>" in vocab and "!" in vocab
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 51


def test_transformers_clip_tokenizer_loads_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    clip_vocab.write_vocab(tmp_path)
    tok = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    tokens = tok.convert_ids_to_tokens(tok("a photo of a cat").input_ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "cat</w>",
        "<|endoftext|>",
    ]
