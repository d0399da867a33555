import os

from fastimg.comfyui.engines import EnginesHandle, loaded_count, parse_loras


def test_a_handle_loads_its_engines_once_and_keeps_them(tiny):
    handle = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32")
    first = handle.pipeline()
    again = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32").pipeline()  # a later queue run
    assert again is first
    assert loaded_count() == 1


def test_another_precision_or_backend_is_another_pipeline(tiny):
    fp32 = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32").pipeline()
    auto = EnginesHandle(str(tiny[1]), "onnxruntime", "auto").pipeline()
    assert auto is not fp32
    assert loaded_count() == 2


def test_a_re_exported_folder_loads_anew_and_its_old_engines_go(tiny, tmp_path):
    import shutil

    folder = tmp_path / "engines"
    shutil.copytree(tiny[1], folder)
    handle = EnginesHandle(str(folder), "onnxruntime", "fp32")
    first, key = handle.pipeline(), handle.key()
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    os.utime(folder / "manifest.json", ns=(stamp + 10**9, stamp + 10**9))
    assert handle.key() != key
    second = EnginesHandle(str(folder), "onnxruntime", "fp32").pipeline()
    assert second is not first
    assert loaded_count() == 1


def test_loras_are_one_file_a_line():
    assert parse_loras(" a.safetensors:0.5\n\nb.safetensors \n") == (
        "a.safetensors:0.5",
        "b.safetensors",
    )


def test_only_the_last_pipelines_used_stay_loaded(tiny, monkeypatch):
    from fastimg.comfyui import engines

    monkeypatch.setattr(engines, "MAX_LOADED", 2)
    first = EnginesHandle(str(tiny[1]), "onnxruntime", "fp32")
    second = EnginesHandle(str(tiny[1]), "onnxruntime", "auto")
    third = EnginesHandle(str(tiny[1]), "auto", "fp32")
    kept = first.pipeline()
    second.pipeline()
    assert first.pipeline() is kept  # used last: second is now the oldest
    third.pipeline()
    assert loaded_count() == 2
    assert first.pipeline() is kept
    assert loaded_count() == 2
