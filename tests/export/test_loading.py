import pytest

from fastimg.errors import InputError

pytest.importorskip("torch")
from fastimg_export.loading import load_pipeline  # noqa: E402


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(InputError, match="model_index.json"):
        load_pipeline(str(tmp_path))


def test_missing_checkpoint_file_is_reported(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_pipeline(str(tmp_path / "model.safetensors"))


def test_unreachable_hub_id_names_the_cause_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="hub model .*network access"):
        load_pipeline("fastimg-tests/no-such-model")


def test_local_folder_loads(tiny):
    pipe = load_pipeline(str(tiny[0]))
    assert pipe.safety_checker is None


def test_single_file_checkpoint_that_cannot_be_converted(tmp_path, monkeypatch):
    import safetensors.torch
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.x": torch.zeros(2)}, str(path))
    with pytest.raises(InputError, match="could not load the checkpoint .*model.safetensors"):
        load_pipeline(str(path))
