"""OpenVINO's int8 graph for static shapes: the kept int8 VAE graphs quantized again from the
GroupNorm graph, measured, kept or dropped, and run by --precision int8 with static shapes."""

import copy
import json
import shutil
from pathlib import Path

import pytest

from fastimg.engine_folder.layout import MANIFEST
from fastimg.engine_folder.manifest import Manifest, load_manifest
from tests.conftest import TINY_INT8_MIN_PSNR_DB

pytest.importorskip("nncf")
pytest.importorskip("openvino")

INT8, STATIC_INT8, STATIC = "openvino-int8", "openvino-int8-static", "openvino-static"
KEPT_INPUTS = {"channel_mean", "centred", "scaled"}  # a GroupNorm's nodes that read its input


def _vaes_with_int8(manifest) -> list[str]:
    return [
        name
        for name in ("vae_encoder", "vae_decoder")
        if INT8 in manifest.components[name].get("variants", {})
    ]


def test_each_kept_int8_vae_graph_gets_one_for_static_shapes_measured_and_recorded(tiny_int8):
    import openvino as ov

    engines = tiny_int8[1]
    manifest = load_manifest(engines)
    names = _vaes_with_int8(manifest)
    if not names:
        pytest.skip("the export kept no int8 VAE graph on this CPU")
    # (the fixture weighs no speed: a graph its image bound does not drop is kept)
    assert any(manifest.variant(name, STATIC_INT8) for name in names)
    static_mix = manifest.data["int8"]["static_image"]
    assert static_mix["psnr_db"] >= TINY_INT8_MIN_PSNR_DB
    assert static_mix["psnr_db"] != manifest.data["int8"]["image"]["psnr_db"]  # other graphs
    for name in names:
        entry = manifest.components[name]
        int8 = entry["variants"][INT8]["quantization"]
        variant = entry["variants"].get(STATIC_INT8)
        record = variant["quantization"] if variant else entry["int8_static_dropped"]
        assert record["method"] == int8["method"] == "full-int8"
        assert record["calibration"] == int8["calibration"]
        assert record["float_layers"] == int8.get("float_layers", [])
        assert record["error"]["layers"] > 5
        speed = record["speed"]
        assert speed["speed_ratio"] == pytest.approx(
            speed["default_seconds"] / speed["int8_seconds"], rel=1e-3
        )
        assert "static shapes" in speed["default_path"]
        assert record["image"]["psnr_db"] >= TINY_INT8_MIN_PSNR_DB or not record["chosen"]
        assert record["chosen"] is (variant is not None) and record["reason"]
        if variant is None:
            assert not (engines / name / "model.int8-static.xml").exists()
            continue
        assert variant["path"] == f"{name}/model.int8-static.xml"
        assert {variant["path"], variant["weights"]} <= set(entry["files"])
        # Quantized from the GroupNorm graph: its reductions, not the exported MVN; quantizers
        # only where a GroupNorm reads its input, its statistics in float.
        model = ov.Core().read_model(str(engines / variant["path"]))
        types = {op.get_type_name() for op in model.get_ops()}
        assert "ReduceMean" in types and "MVN" not in types
        quantized_inside = set()
        for op in model.get_ops():
            if op.get_type_name() != "FakeQuantize":
                continue
            for target in op.output(0).get_target_inputs():
                consumer = target.get_node().get_friendly_name()
                if "/channel_reductions/" in consumer:
                    quantized_inside.add(consumer.rsplit("/", 1)[1])
        assert quantized_inside and quantized_inside <= KEPT_INPUTS


def _static_names(data: dict) -> list[str]:
    """The components with a static int8 graph; a skip where no int8 VAE graph was kept."""
    vaes = (data["components"][n] for n in ("vae_encoder", "vae_decoder"))
    if not any(INT8 in entry.get("variants", {}) for entry in vaes):
        pytest.skip("the export kept no int8 VAE graph on this CPU")
    names = [n for n, c in data["components"].items() if STATIC_INT8 in c.get("variants", {})]
    assert names, "the tiny export kept no int8 VAE graph for static shapes"
    return names


def _loaded(monkeypatch) -> dict:
    from fastimg import backends

    loaded, real = {}, backends.load_session

    def load_session(backend, path, options):
        loaded[path.parent.name] = path.name
        return real(backend, path, options)

    monkeypatch.setattr(backends, "load_session", load_session)
    return loaded


def test_int8_with_static_shapes_runs_them_and_dynamic_shapes_the_int8_graphs(
    tiny_int8, photo, monkeypatch
):
    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg.media.images import psnr

    manifest = load_manifest(tiny_int8[1])
    static = [n for n in _vaes_with_int8(manifest) if manifest.variant(n, STATIC_INT8)]
    if not _vaes_with_int8(manifest):
        pytest.skip("the export kept no int8 VAE graph on this CPU")
    assert static, "the tiny export kept no int8 VAE graph for static shapes"
    loaded = _loaded(monkeypatch)
    job = dict(prompt="a cat", image=photo, strength=0.6, num_inference_steps=4, seed=3)
    images = {}
    for precision, shapes in (("int8", "static"), ("int8", "dynamic"), ("fp32", "static")):
        loaded.clear()
        pipe = Img2ImgPipeline(manifest, "openvino", precision, shapes=shapes)
        (images[precision, shapes],) = pipe(**job)
        if precision == "fp32":
            continue
        for name in static:
            want = "model.int8-static.xml" if shapes == "static" else "model.int8.xml"
            assert loaded[name] == want
        assert loaded["unet"] == "model.int8.xml"  # (the UNet keeps its int8 graph)
    close = psnr(images["int8", "static"], images["fp32", "static"])
    assert close >= TINY_INT8_MIN_PSNR_DB
    assert psnr(images["int8", "static"], images["int8", "dynamic"]) < 99  # another graph ran


def test_dropping_a_components_int8_graph_drops_its_static_one_too(tiny_int8, tmp_path):
    from fastimg_export.int8_choice import drop, only

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    names = _static_names(data)
    name = names[0]
    static = data["components"][name]["variants"][STATIC_INT8]
    without = only(data, ("unet",))["components"][name]
    assert STATIC_INT8 not in without["variants"] and static["path"] not in without["files"]
    drop(engines, data, name, "dropped: a test")
    entry = data["components"][name]
    assert INT8 not in entry["variants"] and STATIC_INT8 not in entry["variants"]
    assert not (engines / static["path"]).exists() and static["path"] not in entry["files"]
    assert entry["int8_dropped"]["reason"] == "dropped: a test"


def test_the_schema_refuses_a_static_int8_graph_without_its_int8_graph(tiny_int8):
    from fastimg.errors import ManifestError

    manifest = load_manifest(tiny_int8[1])
    data = copy.deepcopy(manifest.data)
    name = next(iter(_vaes_with_int8(manifest)), None)
    if name is None:
        pytest.skip("the export kept no int8 VAE graph on this CPU")
    entry = data["components"][name]
    entry["variants"][STATIC_INT8] = entry["variants"].pop(INT8)
    with pytest.raises(ManifestError, match="int8 graph for static shapes without"):
        Manifest.from_data(tiny_int8[1], data)


@pytest.mark.parametrize(
    ("speed_ratio", "psnr_db", "kept", "why"),
    [
        (1.12, 38.0, True, "kept for static shapes: 1.12x"),
        (1.02, 38.0, False, "not 1.05x as fast"),
        (1.5, 12.0, False, "under the 30 dB bound"),
    ],
)
def test_a_static_int8_graph_is_kept_where_it_is_faster_and_close(speed_ratio, psnr_db, kept, why):
    from fastimg_export.int8_static import choose

    chosen, reason = choose(speed_ratio, psnr_db)
    assert chosen is kept and why in reason


class _Folder:
    """A manifest's variant lookup, as backends.component_variant reads it."""

    def __init__(self, variants: dict[str, set]):
        self.variants = variants

    def variant(self, component, name):
        return {"path": f"{component}/{name}"} if name in self.variants[component] else {}


@pytest.mark.parametrize(
    ("backend", "precision", "shapes", "has", "loads"),
    [
        ("openvino", "int8", "static", {INT8, STATIC_INT8, STATIC}, STATIC_INT8),
        ("openvino", "int8", "auto", {INT8, STATIC_INT8, STATIC}, STATIC_INT8),
        ("openvino", "int8", "dynamic", {INT8, STATIC_INT8, STATIC}, INT8),
        ("openvino", "int8", "static", {INT8, STATIC}, INT8),
        ("openvino", "int8", "static", {STATIC}, STATIC),  # (kept in bf16)
        ("openvino", "int8", "dynamic", {STATIC}, None),
        ("openvino", "bf16", "static", {INT8, STATIC_INT8, STATIC}, STATIC),
        ("openvino", "bf16", "dynamic", {STATIC}, None),
        ("onnxruntime-cuda", "fp32", "static", {STATIC}, None),  # OpenVINO's graph: not CUDA's
        ("onnxruntime", "fp32", "dynamic", {"onnxruntime", STATIC}, "onnxruntime"),
    ],
)
def test_each_backend_loads_the_graph_made_for_its_precision_and_shapes(
    backend, precision, shapes, has, loads
):
    from fastimg.backends import component_variant

    folder = _Folder({"vae_decoder": has})
    assert component_variant(backend, folder, "vae_decoder", precision, shapes) == loads


def test_a_folder_exported_before_it_runs_its_int8_graph_with_static_shapes(
    tiny_int8, tmp_path, photo, monkeypatch
):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    names = _static_names(data)
    for name in names:
        entry = data["components"][name]
        variant = entry["variants"].pop(STATIC_INT8)
        for rel in (variant["path"], variant["weights"]):
            del entry["files"][rel]
            Path(engines / rel).unlink()
    (engines / MANIFEST).write_text(json.dumps(data))
    loaded = _loaded(monkeypatch)
    pipe = Img2ImgPipeline.from_engines(engines, "openvino", "int8", shapes="static")
    pipe(prompt="a cat", image=photo, strength=0.6, num_inference_steps=2, seed=1)
    assert all(loaded[name] == "model.int8.xml" for name in names)


def test_info_lists_the_static_int8_graph_or_why_there_is_none(tiny_int8, tmp_path):
    from click.testing import CliRunner

    from fastimg.cli import cli
    from fastimg_export.int8_choice import drop

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    names = _static_names(data)
    info = CliRunner().invoke(cli, ["info", str(engines)]).output
    static_mix = data["int8"]["static_image"]["psnr_db"]
    assert f"; {static_mix:.1f} dB with static shapes" in info
    assert info.count("model.int8-static.xml") == len(names)
    assert info.count("kept for static shapes: ") == len(names)
    drop(engines, data, names[0], "dropped: a test", STATIC_INT8)
    (engines / MANIFEST).write_text(json.dumps(data))
    info = CliRunner().invoke(cli, ["info", str(engines)]).output
    assert "int8 static (none) dropped: a test" in info
    _assert_paths_in_one_column(info, load_manifest(engines))
    assert info.count("model.int8-static.xml") == len(names) - 1


def _without_static_graphs(engines: Path) -> dict:
    """The manifest data of `engines` with its static int8 graphs (and their files) removed."""
    data = json.loads((engines / MANIFEST).read_text())
    for name in _static_names(data):
        entry = data["components"][name]
        variant = entry["variants"].pop(STATIC_INT8)
        for rel in (variant["path"], variant["weights"]):
            del entry["files"][rel]
            (engines / rel).unlink()
    return data


def test_a_static_int8_graph_that_fails_is_left_out_and_the_export_stands(
    tiny_int8, tmp_path, monkeypatch
):
    from fastimg_export import int8_static

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = _without_static_graphs(engines)
    size = data["components"]["unet"]["variants"][INT8]["quantization"]["calibration"]["size"]

    def broken(folder, data, name, feeds, log):
        (folder / name / "model.int8-static.xml").write_text("half written")
        raise RuntimeError(f"NNCF failed on {name}")

    monkeypatch.setattr(int8_static, "write_static_int8", broken)
    lines = []
    feeds = {name: [{}] for name in ("vae_encoder", "vae_decoder")}
    int8_static.add_static_int8(engines, data, feeds, size, lines.append)
    for name in int8_static.candidates(data) or ("vae_encoder", "vae_decoder"):
        assert STATIC_INT8 not in data["components"][name]["variants"]
        assert not (engines / name / "model.int8-static.xml").exists()
    assert any("NNCF failed on vae_decoder" in line for line in lines)
    assert data["int8"]["static_image"]["psnr_db"] > 0  # the mix with static shapes measured
    Manifest.from_data(engines, data)  # what the export then writes is a valid manifest


def test_the_mix_under_the_bound_with_static_shapes_drops_static_graphs_not_int8_ones(
    tiny_int8, tmp_path, monkeypatch
):
    from fastimg_export import int8_choice, int8_static

    engines = shutil.copytree(tiny_int8[1], tmp_path / "engines")
    data = json.loads((engines / MANIFEST).read_text())
    names = _static_names(data)
    size = data["components"]["unet"]["variants"][INT8]["quantization"]["calibration"]["size"]
    monkeypatch.setattr(int8_choice, "MIN_PSNR_DB", 999.0)  # no image reaches it
    check = int8_choice.ImageCheck(engines, size, shapes="static")
    lines = []
    try:
        mix = int8_static._mix_within_bound(check, engines, data, lines.append)
    finally:
        check.close()
    assert mix["psnr_db"] < 999
    for name in names:
        entry = data["components"][name]
        assert STATIC_INT8 not in entry["variants"] and INT8 in entry["variants"]
        assert "under 999" in entry["int8_static_dropped"]["reason"]
        assert not (engines / name / "model.int8-static.xml").exists()
    assert len(lines) == len(names)


def test_int8_with_auto_shapes_compiles_the_int8_graph_first_and_the_static_one_second(
    tiny_int8, photo, monkeypatch
):
    from fastimg.backends.openvino import OpenVinoSession
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    manifest = load_manifest(tiny_int8[1])
    names = _static_names(manifest.data)
    compiled = []
    dynamic, static = OpenVinoSession._compile_dynamic, OpenVinoSession._compile_static

    def compile_dynamic(self):
        compiled.append(f"{Path(self._path).parent.name}/{Path(self._dynamic_path).name}")
        return dynamic(self)

    def compile_static(self, shapes):
        compiled.append(f"{Path(self._path).parent.name}/{Path(self._path).name} static")
        return static(self, shapes)

    monkeypatch.setattr(OpenVinoSession, "_compile_dynamic", compile_dynamic)
    monkeypatch.setattr(OpenVinoSession, "_compile_static", compile_static)
    pipe = Img2ImgPipeline(manifest, "openvino", "int8", shapes="auto")
    job = dict(prompt="a cat", image=photo, strength=0.6, num_inference_steps=2, seed=3)
    pipe(**job)
    assert {f"{n}/model.int8.xml" for n in names} <= set(compiled)
    assert not any(c.endswith(" static") for c in compiled if c.split("/")[0] in names)
    pipe(**job)  # these shapes' second call
    assert {f"{n}/model.int8-static.xml static" for n in names} <= set(compiled)


def test_the_cli_runs_the_static_int8_graphs_as_its_help_says(
    tiny_int8, tmp_path, photo, monkeypatch
):
    from click.testing import CliRunner

    from fastimg.cli import cli

    help_text = " ".join(CliRunner().invoke(cli, ["transform", "--help"]).output.split())
    assert "int8 runs the VAE graphs the export quantized for exact shapes" in help_text
    names = _static_names(load_manifest(tiny_int8[1]).data)
    photo.save(tmp_path / "in.png")
    for shapes, graph in (("static", "model.int8-static.xml"), ("dynamic", "model.int8.xml")):
        loaded = _loaded(monkeypatch)
        result = CliRunner().invoke(
            cli,
            ["transform", str(tmp_path / "in.png"), "--engines", str(tiny_int8[1]),
             "--prompt", "a fox", "--precision", "int8", "--shapes", shapes,
             "-o", str(tmp_path / f"{shapes}.png"), "--steps", "2"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert all(loaded[name] == graph for name in names)
        assert (tmp_path / f"{shapes}.png").is_file()


def _assert_paths_in_one_column(info: str, manifest: Manifest):
    """Every graph variant's path and int8 record in `fastimg info` starts in one column,
    past the longest label."""
    labels = {"int8 static (none)", "int8 (none)", "int8 (other)"}
    labels.update(*(entry.get("variants", {}) for entry in manifest.components.values()))
    starts = [
        len(line) - len(line[6 + len(label) :].lstrip())
        for line in info.splitlines()
        for label in labels
        if line.startswith(" " * 6 + label + " ")
    ]
    assert len(starts) > len(manifest.components) and len(set(starts)) == 1, info
    assert starts[0] > 6 + max(map(len, labels)), info
