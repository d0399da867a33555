import pytest

from fastimg.backends.openvino import compile_config, compiled_precision
from tests.backends.openvino_graphs import compiled_layers

ov = pytest.importorskip("openvino")


def test_the_compiled_precision_is_read_from_openvinos_type():
    # str(ov.Type.bf16) is "<Type: 'bfloat16'>": the name must be asked for, not searched.
    assert compiled_precision(ov.Type.bf16) == "bf16"
    assert compiled_precision(ov.Type.f32) == "fp32"


def test_concurrency_above_one_asks_for_one_stream_per_request():
    assert compile_config("fp32", 2, 1)["PERFORMANCE_HINT"] == "LATENCY"
    config = compile_config("bf16", 2, 3)
    assert config["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert config["PERFORMANCE_HINT_NUM_REQUESTS"] == 3
    assert config["INFERENCE_PRECISION_HINT"] == "bf16"


@pytest.fixture
def own_engines(tiny, tmp_path):
    """A private copy of the tiny engines, without what other tests compiled into theirs
    (these tests fill and inspect its compiled caches)."""
    import shutil

    return shutil.copytree(
        tiny[1], tmp_path / "engines", ignore=shutil.ignore_patterns("openvino_cache")
    )


def _transform(pipe, photo, size=64, seed=5, prompt="a red fox"):
    import numpy as np

    (image,) = pipe(
        prompt, photo.resize((size, size)), strength=0.5, num_inference_steps=4,
        guidance_scale=3.0, seed=seed,
    )  # fmt: skip
    return np.asarray(image)


def test_static_and_dynamic_shapes_make_the_same_image(own_engines, photo):
    import numpy as np

    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    dynamic = Img2ImgPipeline.from_engines(own_engines, backend="openvino", precision="fp32")
    static = Img2ImgPipeline.from_engines(
        own_engines, backend="openvino", precision="fp32", shapes="static"
    )
    unet = static.engines._loaded[None].sessions["unet"].session
    assert unet.static_shapes is None  # nothing compiled before a call says the shapes
    for size in (64, 96):
        ours, theirs = _transform(static, photo, size), _transform(dynamic, photo, size)
        assert psnr(ours, theirs) >= 60.0 and np.abs(ours.astype(int) - theirs).max() <= 1
        assert unet.static_shapes["sample"] == (2, 4, size // 8, size // 8)  # guided: batch 2
    assert dynamic.engines._loaded[None].sessions["unet"].session.static_shapes is None


def test_auto_compiles_a_shape_on_its_second_call_and_holds_one_model(own_engines, photo):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(
        own_engines, backend="openvino", precision="fp32", shapes="auto"
    )
    sessions = {name: s.session for name, s in pipe.engines._loaded[None].sessions.items()}
    _transform(pipe, photo, 64)  # the UNet runs 2 steps (its 2nd call compiles); the rest once
    assert sessions["unet"].static_shapes["sample"][2:] == (8, 8)
    assert sessions["vae_encoder"].static_shapes is None
    _transform(pipe, photo, 64, prompt="a fox")  # (a new prompt: the text encoder runs again)
    assert all(s.static_shapes is not None for s in sessions.values())
    _transform(pipe, photo, 72)  # a new size: its first VAE calls go back to the dynamic model
    assert sessions["vae_decoder"].static_shapes is None
    assert sessions["unet"].static_shapes["sample"][2:] == (9, 9)  # one model held, the newest


def _one_call_in_a_new_process(engines, shapes: str) -> None:
    """One 64 px call on `engines` (OpenVINO fp32, `shapes` shapes) in a process of its own."""
    import subprocess
    import sys

    code = (
        "from PIL import Image; from fastimg.diffusion.pipeline import Img2ImgPipeline; "
        f"p = Img2ImgPipeline.from_engines({str(engines)!r}, backend='openvino', "
        f"precision='fp32', shapes={shapes!r}); "
        "p('a red fox', Image.new('RGB', (64, 64)), strength=0.5, num_inference_steps=4, seed=1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_static_compiles_are_cached_per_shape_and_reused_by_a_new_process(own_engines, photo):
    import json

    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(
        own_engines, backend="openvino", precision="fp32", shapes="static"
    )
    _transform(pipe, photo, 64)
    _transform(pipe, photo, 96)
    folders = sorted((own_engines / "openvino_cache").glob("unet-static-*"))
    shapes = [json.loads((f / "key.json").read_text())["options"]["static_shapes"] for f in folders]
    assert sorted(s["sample"][2] for s in shapes) == [8, 12]
    assert all(any(p.suffix == ".blob" for p in f.iterdir()) for f in folders)
    stamps = {p: p.stat().st_mtime_ns for f in folders for p in f.glob("*.blob")}
    _one_call_in_a_new_process(own_engines, "static")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # loaded, not compiled again
    assert sorted((own_engines / "openvino_cache").glob("unet-static-*")) == folders


def test_dynamic_compiles_are_cached_rewritten_and_reused_by_a_new_process(own_engines, photo):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(own_engines, backend="openvino", precision="fp32")
    _transform(pipe, photo, 64)
    decoder = pipe.engines._loaded[None].sessions["vae_decoder"].session
    assert "DepthToSpace" in [kind for kind, _ in compiled_layers(decoder)]  # rewritten
    blobs = sorted((own_engines / "openvino_cache").glob("*/dynamic-model.onnx/*.blob"))
    components = sorted(blob.parent.parent.name.rsplit("-", 1)[0] for blob in blobs)
    assert components == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    stamps = {blob: blob.stat().st_mtime_ns for blob in blobs}
    _one_call_in_a_new_process(own_engines, "dynamic")
    assert {blob: blob.stat().st_mtime_ns for blob in stamps} == stamps  # imported, not compiled
    assert sorted((own_engines / "openvino_cache").glob("*/dynamic-model.onnx/*.blob")) == blobs


def test_a_cached_dynamic_compile_is_imported_from_its_blob_without_reading_the_graph(
    own_engines, tmp_path, monkeypatch
):
    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession

    path = own_engines / "vae_decoder" / "model.onnx"
    first = OpenVinoSession(path, cache_dir=tmp_path)
    feeds = {"latent_sample": np.random.default_rng(0).standard_normal((1, 4, 7, 9))}
    feeds = {name: array.astype(np.float32) for name, array in feeds.items()}
    expected = first.run(feeds)["sample"]
    assert len(list((tmp_path / "dynamic-model.onnx").glob("*.blob"))) == 1

    monkeypatch.setattr(OpenVinoSession, "_read", lambda *a: pytest.fail("read the graph"))
    monkeypatch.setattr(OpenVinoSession, "_compile", lambda *a: pytest.fail("compiled again"))
    second = OpenVinoSession(path, cache_dir=tmp_path)
    assert second.signature == first.signature
    np.testing.assert_array_equal(second.run(feeds)["sample"], expected)


@pytest.mark.parametrize("record", ["missing", "another size"])
def test_a_blob_not_marked_whole_is_compiled_again_not_imported(own_engines, tmp_path, record):
    """Another process may be writing the blob still: only one its record marks whole loads."""
    import json

    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession

    path = own_engines / "vae_decoder" / "model.onnx"
    feeds = {"latent_sample": np.ones((1, 4, 8, 8), np.float32)}
    expected = OpenVinoSession(path, cache_dir=tmp_path).run(feeds)["sample"]
    marker = tmp_path / "dynamic-model.onnx" / "blob.json"
    if record == "missing":
        marker.unlink()
    else:
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "bytes": 1}))
    compiled = []
    real = OpenVinoSession._compile

    def counted(self, *args):
        compiled.append(args[-1])
        return real(self, *args)

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(OpenVinoSession, "_compile", counted)
        again = OpenVinoSession(path, cache_dir=tmp_path)
    assert compiled == [path]
    np.testing.assert_array_equal(again.run(feeds)["sample"], expected)
    assert json.loads(marker.read_text())["bytes"] > 1  # marked whole again


def test_a_dynamic_compile_in_a_folder_that_cannot_be_written_is_not_cached(own_engines, tmp_path):
    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "dynamic-model.onnx").write_text("a file where the folder would go")
    session = OpenVinoSession(own_engines / "vae_decoder" / "model.onnx", cache_dir=cache)
    feeds = {"latent_sample": np.ones((1, 4, 8, 8), np.float32)}
    assert session.run(feeds)["sample"].shape == (1, 3, 64, 64)
    assert sorted(p.name for p in cache.iterdir()) == ["dynamic-model.onnx"]


def test_an_unknown_shapes_mode_is_refused(tiny):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.errors import InputError

    with pytest.raises(InputError, match="shapes must be one of dynamic, static, auto"):
        Img2ImgPipeline.from_engines(tiny[1], backend="openvino", shapes="frozen")


def test_a_failed_static_compile_is_tried_again_not_left_half_done(own_engines, monkeypatch):
    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.errors import EngineError

    session = OpenVinoSession(own_engines / "vae_decoder" / "model.onnx", shapes="static")
    feeds = {session.input_names[0]: np.zeros((1, 4, 8, 8), np.float32)}
    session.run(feeds)
    real = session._compile_static
    monkeypatch.setattr(session, "_compile_static", lambda shapes: (_ for _ in ()).throw(
        EngineError("no memory for it")))  # fmt: skip
    other = {session.input_names[0]: np.zeros((1, 4, 9, 9), np.float32)}
    with pytest.raises(EngineError, match="no memory"):
        session.run(other)
    with pytest.raises(EngineError, match="no memory"):
        session.run(feeds)  # the old model was let go before the failed compile
    monkeypatch.setattr(session, "_compile_static", real)
    assert session.run(other)[session.output_names[0]].shape[-1] == 72
    assert session.static_shapes[session.input_names[0]] == (1, 4, 9, 9)


def _static_session(engines, cache):
    from fastimg.backends.openvino import OpenVinoSession

    cache.mkdir(exist_ok=True)
    return OpenVinoSession(
        engines / "vae_decoder" / "model.onnx", shapes="static", static_cache=lambda shapes: cache
    )


def test_a_cached_static_compile_is_imported_from_its_blob_without_compiling(
    own_engines, tmp_path, monkeypatch
):
    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession

    first = _static_session(own_engines, tmp_path / "cache")
    feeds = {first.input_names[0]: np.random.default_rng(0).standard_normal((1, 4, 8, 8))}
    feeds = {name: array.astype(np.float32) for name, array in feeds.items()}
    expected = first.run(feeds)[first.output_names[0]]
    assert len(list((tmp_path / "cache").glob("*.blob"))) == 1

    second = _static_session(own_engines, tmp_path / "cache")
    monkeypatch.setattr(OpenVinoSession, "_compile", lambda *a: pytest.fail("compiled again"))
    np.testing.assert_array_equal(second.run(feeds)[second.output_names[0]], expected)


def _static_decoder(engines, tmp_path):
    from fastimg.backends.openvino import OpenVinoSession

    return OpenVinoSession(
        engines / "vae_decoder" / "model.onnx",
        shapes="static",
        cache_dir=tmp_path / "dynamic",
        static_cache=lambda shapes: tmp_path / "static",
    )


def test_a_static_start_with_its_io_recorded_reads_no_graph(own_engines, tmp_path, monkeypatch):
    import numpy as np

    from fastimg.backends.openvino import OpenVinoSession

    (tmp_path / "dynamic").mkdir()
    (tmp_path / "static").mkdir()
    first = _static_decoder(own_engines, tmp_path)
    assert (tmp_path / "dynamic" / "io-model.onnx.json").is_file()
    feeds = {"latent_sample": np.random.default_rng(0).standard_normal((1, 4, 8, 8))}
    feeds = {name: array.astype(np.float32) for name, array in feeds.items()}
    expected = first.run(feeds)["sample"]

    # A cold start with its shapes compiled: the I/O from the record, the model from its blob.
    monkeypatch.setattr(OpenVinoSession, "_read", lambda self: pytest.fail("read the graph"))
    second = _static_decoder(own_engines, tmp_path)
    assert (second.input_names, second.output_names) == (first.input_names, first.output_names)
    assert second.signature == first.signature == {
        "latent_sample": ("f32", 4), "sample": ("f32", 4)
    }  # fmt: skip
    np.testing.assert_array_equal(second.run(feeds)["sample"], expected)


@pytest.mark.parametrize(
    "record", ["not json", '{"inputs": []}', '{"inputs": [[1, "f32", 4]], "outputs": []}']
)
def test_a_damaged_io_record_is_read_from_the_graph_again(own_engines, tmp_path, record):
    (tmp_path / "dynamic").mkdir()
    (tmp_path / "static").mkdir()
    (tmp_path / "dynamic" / "io-model.onnx.json").write_text(record)
    session = _static_decoder(own_engines, tmp_path)
    assert (session.input_names, session.output_names) == (["latent_sample"], ["sample"])
    assert "latent_sample" in (tmp_path / "dynamic" / "io-model.onnx.json").read_text()


def test_a_graph_whose_io_cannot_be_recorded_still_loads(own_engines, tmp_path):
    (tmp_path / "static").mkdir()
    session = _static_decoder(own_engines, tmp_path)  # its cache folder "dynamic" is missing
    assert session.signature["sample"] == ("f32", 4)
    assert not (tmp_path / "dynamic").exists()


@pytest.mark.parametrize("damage", ["body", "header"])
def test_a_damaged_static_blob_is_compiled_again(own_engines, tmp_path, damage):
    import numpy as np

    first = _static_session(own_engines, tmp_path / "cache")
    feeds = {first.input_names[0]: np.ones((1, 4, 8, 8), np.float32)}
    expected = first.run(feeds)[first.output_names[0]]
    (blob,) = (tmp_path / "cache").glob("*.blob")
    data = blob.read_bytes()
    start = data.index(b"/>\n") + 3
    blob.chmod(0o644)
    if damage == "body":
        blob.write_bytes(data[:start] + b"not a compiled model")
    else:
        blob.write_bytes(b"<?xml something else" + data[start:])

    second = _static_session(own_engines, tmp_path / "cache")
    np.testing.assert_array_equal(second.run(feeds)[second.output_names[0]], expected)


def test_a_cache_entry_written_by_another_process_at_once_falls_back_to_compiling(
    own_engines, monkeypatch, tmp_path
):
    pytest.importorskip("openvino")
    import openvino as ov

    from fastimg.backends.openvino import OpenVinoSession

    original, configs = ov.Core.compile_model, []

    def racing(core, model, device, config):
        configs.append(dict(config))
        if "CACHE_DIR" in config:  # what a concurrent writer of the same blob caused in CI
            raise RuntimeError("filesystem error: cannot set permissions: No such file")
        return original(core, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", racing)
    session = OpenVinoSession(own_engines / "vae_decoder" / "model.onnx", cache_dir=tmp_path)
    assert "latent_sample" in session.input_names
    assert ["CACHE_DIR" in c for c in configs] == [True, False]


def _decoder(engines, **options):
    from fastimg.backends.openvino import OpenVinoSession

    return OpenVinoSession(
        engines / "vae_decoder" / "model.onnx", threads=1, cache_dir=engines / "ov", **options
    )


@pytest.mark.parametrize("shapes", ["dynamic", "static"])
def test_a_call_that_gives_back_ends_with_its_model_compiled_anew(own_engines, tmp_path, shapes):
    import numpy as np

    from fastimg.backends.scratch import giving_back_scratch

    static = {"static_cache": lambda _: tmp_path} if shapes == "static" else {}
    session = _decoder(own_engines, shapes=shapes, **static)
    feeds = {session.input_names[0]: np.ones((1, 4, 8, 8), np.float32)}
    expected = session.run(feeds)[session.output_names[0]]
    held = session._requests
    with giving_back_scratch():
        session.run(feeds)
        session.run(feeds)
        assert session._requests is held  # not between the runs of the call
    renewed = session._requests
    assert renewed is not held and renewed is not None  # its requests and model let go
    assert renewed._made == 1  # and the new model already ran once, on the usual shapes
    assert session.static_shapes == (
        None if shapes == "dynamic" else {"latent_sample": (1, 4, 8, 8)}
    )
    np.testing.assert_array_equal(session.run(feeds)[session.output_names[0]], expected)
    assert session._requests is renewed  # and an ordinary run keeps it


def test_a_model_in_use_is_not_compiled_anew_and_a_failed_compile_is_tried_again(
    own_engines, monkeypatch
):
    import numpy as np

    from fastimg.errors import EngineError

    session = _decoder(own_engines)
    feeds = {session.input_names[0]: np.ones((1, 4, 8, 8), np.float32)}
    expected = session.run(feeds)[session.output_names[0]]
    held = session._requests
    with held.lend():  # another caller runs on it
        session.give_back()
    assert session._requests is held
    real = session._compile
    monkeypatch.setattr(session, "_compile", lambda *a: (_ for _ in ()).throw(
        EngineError("no memory for it")))  # fmt: skip
    session.give_back()
    assert session._requests is None  # the old model was let go before the compile
    monkeypatch.setattr(session, "_compile", real)
    np.testing.assert_array_equal(session.run(feeds)[session.output_names[0]], expected)
