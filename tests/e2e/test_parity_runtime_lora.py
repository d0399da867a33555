"""LoRAs applied at run time on engines exported without them, against diffusers with the same
LoRAs loaded and fused (load_lora_weights, set_adapters, fuse_lora)."""

import shutil

import numpy as np
import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import psnr
from tests.e2e.test_parity import OPENVINO, reference, run_reference

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnx")

SETTINGS = dict(prompt="a red fox", strength=0.7, num_inference_steps=4, guidance_scale=5.0)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    """Two random LoRAs of the tiny model (UNet and text encoder, up projections not zero)."""
    from fastimg_export.random_models import write_random_model

    root = tmp_path_factory.mktemp("runtime-loras")
    return [write_random_model("tiny-lora", root / f"style{k}.safetensors", seed=k) for k in (0, 1)]


@pytest.fixture
def engines(tiny, tmp_path):
    """A private copy of the tiny engines (the LoRA graphs are written beside its graphs)."""
    return shutil.copytree(tiny[1], tmp_path / "engines")


def diffusers_with(model, loras: list, scales: list, lora_scale: float = 1.0):
    pipe = reference(model)
    names = [f"l{k}" for k in range(len(loras))]
    for name, path in zip(names, loras, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=scales)
    pipe.fuse_lora(adapter_names=names, lora_scale=lora_scale)
    return pipe


@pytest.mark.parametrize("scale", [0.5, 1.3])
def test_one_lora_at_run_time_matches_diffusers_fused(tiny, engines, lora_files, photo, scale):
    ref = diffusers_with(tiny[0], lora_files[:1], [1.0], lora_scale=scale)
    config = dict(ref.scheduler.config)
    expected = run_reference(ref, config, "ddim", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(lora_files[0], scale=scale)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    assert psnr(plain[0], got[0]) < 40.0  # the LoRA changed the image: not a vacuous match
    assert got[0].info["fastimg:loras"] == f"style0:{scale:g}"


def test_two_loras_with_their_own_scales_match_diffusers(tiny, engines, lora_files, photo):
    ref = diffusers_with(tiny[0], lora_files, [0.6, 0.9])
    config = dict(ref.scheduler.config)
    expected = run_reference(ref, config, "euler_a", photo, seed=3, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    first = pipe.load_lora(lora_files[0], scale=0.6)
    pipe.load_lora(lora_files[1], scale=0.9)
    got = pipe(image=photo, seed=3, scheduler="euler_a", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    pipe.set_lora_scales({first: 0.0})  # only the second one now
    alone = pipe(image=photo, seed=3, scheduler="euler_a", **SETTINGS)
    ref_alone = diffusers_with(tiny[0], lora_files[1:], [0.9])
    expected_alone = run_reference(ref_alone, config, "euler_a", photo, seed=3, **SETTINGS)
    assert psnr(expected_alone[0], alone[0]) >= 40.0
    assert psnr(got[0], alone[0]) < 40.0


def test_scale_zero_and_unloading_give_the_plain_engines_images(engines, lora_files, photo):
    def within_a_level(a, b) -> bool:  # the twin runs the graph ONNX Runtime's fusions skip
        return np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1

    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = pipe(image=photo, seed=4, **SETTINGS)[0]
    name = pipe.load_lora(lora_files[0], scale=1.0)
    assert not within_a_level(plain, pipe(image=photo, seed=4, **SETTINGS)[0])
    pipe.set_lora_scales({name: 0})
    off = pipe(image=photo, seed=4, **SETTINGS)[0]
    assert within_a_level(plain, off) and "fastimg:loras" not in off.info
    pipe.set_lora_scales({name: 1.0})
    pipe.unload_lora(name)
    assert within_a_level(plain, pipe(image=photo, seed=4, **SETTINGS)[0])
    assert pipe.sessions["unet"].plain is None  # the plain graph's weights were let go


def test_the_prompt_cache_is_keyed_by_the_active_loras(engines, lora_files, photo):
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    name = pipe.load_lora(lora_files[0], scale=1.0)
    with_lora = pipe.encode_prompt("a red fox", None, cfg=True)
    pipe.set_lora_scales({name: 0})
    without = pipe.encode_prompt("a red fox", None, cfg=True)
    assert not np.allclose(with_lora, without)  # its text encoder LoRA counts, not a stale entry


def test_a_kohya_file_is_the_same_lora(tiny, engines, lora_files, photo, tmp_path):
    from safetensors.numpy import save_file

    from fastimg.lora.files import read_safetensors

    tensors, _ = read_safetensors(lora_files[0])
    kohya = {}
    for key, array in tensors.items():
        model, _, rest = key.partition(".")
        stem, _, which = rest.rpartition(".lora_")
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[model]
        name = prefix + stem.replace(".", "_")
        part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[which]
        kohya[f"{name}.{part}"] = array
        kohya[f"{name}.alpha"] = np.array(8.0, np.float32)  # alpha 8 at rank 4: twice the scale
    path = tmp_path / "kohya.safetensors"
    save_file(kohya, str(path))
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    pipe.load_lora(path, scale=0.5)
    got = pipe(image=photo, seed=2, **SETTINGS)
    pipe.unload_lora("kohya")
    pipe.load_lora(lora_files[0], scale=1.0)
    same = pipe(image=photo, seed=2, **SETTINGS)
    assert psnr(same[0], got[0]) >= 60.0  # 0.5 x alpha/rank 2 = the PEFT file at 1.0
    ref = diffusers_with(tiny[0], [path], [1.0], lora_scale=0.5)
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0


def test_an_sdxl_lora_at_run_time_matches_diffusers(tiny_sdxl, photo, tmp_path):
    from fastimg_export.random_models import write_random_model

    model, folder = tiny_sdxl
    engines = shutil.copytree(folder, tmp_path / "engines")
    lora = write_random_model("tiny-sdxl-lora", tmp_path / "xl.safetensors")
    ref = diffusers_with(model, [lora], [1.0], lora_scale=0.7)
    expected = run_reference(ref, dict(ref.scheduler.config), "euler", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = pipe(image=photo, seed=2, scheduler="euler", **SETTINGS)
    pipe.load_lora(lora, scale=0.7)
    got = pipe(image=photo, seed=2, scheduler="euler", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    assert psnr(plain[0], got[0]) < 40.0


@OPENVINO
def test_openvino_runs_the_same_lora_and_caches_its_compiled_twin(tiny, engines, lora_files, photo):
    from fastimg.backends.registry import describe

    ref = diffusers_with(tiny[0], lora_files[:1], [1.0], lora_scale=0.8)
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
    pipe.load_lora(lora_files[0], scale=0.8)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0

    cache = engines / describe("openvino").cache

    def twin_blobs():
        found = cache.glob("*-lora-*/**/*.blob")
        return sorted((path, path.stat().st_mtime_ns) for path in found)

    compiled = twin_blobs()
    keyed = {path.relative_to(cache).parts[0] for path, _ in compiled}
    assert {folder.split("-lora-")[0] for folder in keyed} >= {"unet"}
    again = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
    again.load_lora(lora_files[0], scale=0.8)
    assert twin_blobs() == compiled  # the twin loaded from its cache, not compiled again
    assert psnr(got[0], again(image=photo, seed=2, scheduler="ddim", **SETTINGS)[0]) >= 60.0


@OPENVINO
@pytest.mark.parametrize(("precision", "shapes"), [("bf16", "dynamic"), ("fp32", "static")])
def test_openvino_bf16_and_static_shapes_take_loras(
    tiny, engines, lora_files, photo, precision, shapes
):
    ref = diffusers_with(tiny[0], lora_files[:1], [1.0], lora_scale=0.8)
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(
        engines, backend="openvino", precision=precision, shapes=shapes
    )
    plain = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(lora_files[0], scale=0.8)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    if pipe.exact:  # fp32, or bf16 compiled as f32 on a CPU without it
        assert psnr(expected[0], got[0]) >= 40.0
    else:  # bf16 products: the LoRA's image, far closer to diffusers' than the plain one is
        assert psnr(expected[0], got[0]) >= psnr(expected[0], plain[0]) + 6.0
    assert got[0].info["fastimg:loras"] == "style0:0.8"


def test_lora_ready_compiles_the_twins_once_then_loras_load_without_compiling(
    tiny, engines, lora_files, photo, monkeypatch
):
    from fastimg.diffusion import loras as loras_module

    before = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = before(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(
        engines, backend="onnxruntime", precision="fp32", lora_ready=True
    )
    compiled = []
    load_session = loras_module.load_session
    monkeypatch.setattr(
        loras_module, "load_session", lambda *a, **k: compiled.append(a) or load_session(*a, **k)
    )
    no_lora = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(lora_files[0], scale=0.6)
    pipe.load_lora(lora_files[1], scale=0.9)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert compiled == []  # both LoRAs were feeds of the twins compiled at load
    assert psnr(plain[0], no_lora[0]) >= 60.0  # the twins with no LoRA: the plain graphs
    ref = diffusers_with(tiny[0], lora_files, [0.6, 0.9])
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0


def _ldm(name: str, per_block: int) -> str:
    """diffusers' underscored UNet attention path in kohya's LDM spelling (the inverse map)."""
    import re

    down = re.match(r"down_blocks_(\d+)_attentions_(\d+)_(.+)$", name)
    if down:
        return f"input_blocks_{1 + int(down[1]) * per_block + int(down[2])}_1_{down[3]}"
    up = re.match(r"up_blocks_(\d+)_attentions_(\d+)_(.+)$", name)
    if up:
        return f"output_blocks_{int(up[1]) * per_block + int(up[2])}_1_{up[3]}"
    return name.replace("mid_block_attentions_0_", "middle_block_1_")


def test_a_kohya_sdxl_file_in_ldm_names_matches_diffusers(tiny_sdxl, photo, tmp_path):
    from safetensors.numpy import save_file

    from fastimg.lora.files import read_safetensors
    from fastimg_export.random_models import write_random_model

    model, folder = tiny_sdxl
    engines = shutil.copytree(folder, tmp_path / "engines")
    peft = write_random_model("tiny-sdxl-lora", tmp_path / "xl.safetensors")
    kohya = {}
    for key, array in read_safetensors(peft)[0].items():
        model_name, _, rest = key.partition(".")
        stem, _, which = rest.rpartition(".lora_")
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_",
                  "text_encoder_2": "lora_te2_"}[model_name]  # fmt: skip
        name = stem.replace(".", "_")
        if model_name == "unet":
            assert "attentions" in name  # (the random LoRA adapts attention projections)
            name = _ldm(name, per_block=2)  # tiny SDXL: 1 layer per block, + its sampler
        part = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[which]
        kohya[f"{prefix}{name}.{part}"] = array
        kohya[f"{prefix}{name}.alpha"] = np.array(array.shape[0] if which == "A.weight"
                                                  else array.shape[1], np.float32)  # fmt: skip
    path = tmp_path / "kohya-xl.safetensors"
    save_file(kohya, str(path))
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    pipe.load_lora(path, scale=0.7)
    got = pipe(image=photo, seed=2, scheduler="euler", **SETTINGS)
    pipe.unload_lora("kohya-xl")
    pipe.load_lora(peft, scale=0.7)
    same = pipe(image=photo, seed=2, scheduler="euler", **SETTINGS)
    assert psnr(same[0], got[0]) >= 60.0
    ref = diffusers_with(model, [path], [1.0], lora_scale=0.7)
    expected = run_reference(ref, dict(ref.scheduler.config), "euler", photo, seed=2, **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0


def _lora_of_convolutions(tiny, tmp_path):
    """An LCM-LoRA-like file: 3x3 resnet convolutions, strided downsamplers, 1x1 projections,
    the time embedding's linears and the feed-forwards, besides the attention projections."""
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    unet = reference(tiny[0]).unet
    torch.manual_seed(5)
    targets = ["to_q", "to_out.0", "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out",
               "time_emb_proj", "ff.net.2", "downsamplers.0.conv", "linear_1"]  # fmt: skip
    config = LoraConfig(r=4, lora_alpha=2, init_lora_weights=False, target_modules=targets)
    inject_adapter_in_model(config, unet)
    layers = get_peft_model_state_dict(unet)
    assert any(value.ndim == 4 and value.shape[-1] == 3 for value in layers.values())
    diffusers.StableDiffusionImg2ImgPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=layers, weight_name="convs.safetensors",
        unet_lora_adapter_metadata=config.to_dict(),
    )  # fmt: skip
    return tmp_path / "convs.safetensors"


def test_a_lora_of_convolutions_and_linears_matches_diffusers(tiny, engines, photo, tmp_path):
    path = _lora_of_convolutions(tiny, tmp_path)
    ref = diffusers_with(tiny[0], [path], [1.0], lora_scale=0.9)
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(path, scale=0.9)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    assert psnr(plain[0], got[0]) < 40.0


@OPENVINO
def test_openvino_takes_a_lora_of_wide_convolutions_at_fixed_ranks(
    tiny, engines, lora_files, photo, tmp_path, monkeypatch
):
    """OpenVINO compiles no convolution whose weights' shape is open: a 3x3 conv's branch gets
    a fixed rank (the loaded LoRAs' ranks summed); a LoRA within it loads without a compile."""
    from fastimg.diffusion import loras as loras_module

    path = _lora_of_convolutions(tiny, tmp_path)
    ref = diffusers_with(tiny[0], [path], [1.0], lora_scale=0.9)
    expected = run_reference(ref, dict(ref.scheduler.config), "ddim", photo, seed=2, **SETTINGS)
    pipe = Img2ImgPipeline.from_engines(engines, backend="openvino", precision="fp32")
    pipe.load_lora(path, name="convs", scale=0.9)
    got = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    unet = pipe.engines.default().sessions["unet"]
    fixed = {t.module: t.rank for t in unet.order if t.rank is not None}
    assert fixed and set(fixed.values()) == {4}  # the file's rank 4, on its 3x3 convolutions
    compiled = []
    load_session = loras_module.load_session
    monkeypatch.setattr(
        loras_module, "load_session", lambda *a, **k: compiled.append(a) or load_session(*a, **k)
    )
    pipe.load_lora(lora_files[0], scale=0.5)  # attention and text encoder layers only
    pipe.set_lora_scales({"convs": 0.0})
    assert [c[1].parent.name for c in compiled] == ["text_encoder"]  # the UNet's: a feed
    pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(path, name="convs_again", scale=0.4)  # ranks 4 + 4 no longer fit
    assert [c[1].parent.name for c in compiled] == ["text_encoder", "unet"]
    unet = pipe.engines.default().sessions["unet"]
    assert {t.rank for t in unet.order if t.rank is not None} == {8}


def test_an_lcm_lora_switches_the_fast_mode_on_for_one_call(tiny, engines, photo, tmp_path):
    """LCM-LoRA as people use it at run time: one call with it, the LCM sampler, 4 steps and
    no CFG (diffusers: the LoRA fused, LCMScheduler); the next call without it is the plain one."""
    path = _lora_of_convolutions(tiny, tmp_path)
    fast = dict(prompt="a red fox", strength=0.6, num_inference_steps=4, guidance_scale=1.0)
    ref = diffusers_with(tiny[0], [path], [1.0])
    expected = run_reference(ref, dict(ref.scheduler.config), "lcm", photo, seed=4, **fast)
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime", precision="fp32")
    plain = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    pipe.load_lora(path, name="lcm", scale=0.0)  # loaded, off unless a call turns it on
    got = pipe(image=photo, seed=4, scheduler="lcm", lora_scales={"lcm": 1.0}, **fast)
    after = pipe(image=photo, seed=2, scheduler="ddim", **SETTINGS)
    assert psnr(expected[0], got[0]) >= 40.0
    assert got[0].info["fastimg:loras"] == "lcm:1" and "fastimg:loras" not in after[0].info
    assert psnr(plain[0], after[0]) >= 60.0


LORA_RUN = """
import sys
import numpy as np
from fastimg.diffusion.pipeline import Img2ImgPipeline
from fastimg.media.images import EXAMPLE_IMAGE, load_image

engines, lora, precision = sys.argv[1:]
pipe = Img2ImgPipeline.from_engines(engines, backend="openvino", precision=precision)
pipe.load_lora(lora, scale=0.8)
image = load_image(EXAMPLE_IMAGE).resize((96, 64))
(out,) = pipe(prompt="a cat", image=image, strength=0.5, num_inference_steps=4, seed=3)
print(pipe.precision, float(np.asarray(out, dtype=np.float64).mean()))
"""


@OPENVINO
def test_the_twins_compiled_cache_across_processes_and_precisions(engines, lora_files):
    """fp32 twice, then bf16, then fp32 again, each in its own process: the second fp32 run
    loads the first's compiled twin, bf16 compiles its own (its own keyed folder, never the
    fp32 blobs), and the last fp32 run gives the first's image."""
    import subprocess
    import sys

    from fastimg.backends.registry import describe

    def run(precision: str) -> str:
        command = [sys.executable, "-c", LORA_RUN, str(engines), str(lora_files[0]), precision]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def twin_blobs() -> dict:
        found = (engines / describe("openvino").cache).glob("unet-lora-*/**/*.blob")
        return {path: path.stat().st_mtime_ns for path in found}

    first = run("fp32")
    after_fp32 = twin_blobs()
    assert after_fp32 and run("fp32") == first
    assert twin_blobs() == after_fp32  # loaded from the cache, not compiled again
    bf16 = run("bf16")
    if bf16.split()[0] == "bf16":  # (a CPU without bf16 compiles f32: the same key then)
        assert {p.parent for p in twin_blobs()} > {p.parent for p in after_fp32}
    assert run("fp32") == first
