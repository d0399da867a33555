import gc
import json

import pytest
from PIL import Image

from fastimg.errors import EngineError
from fastimg_bench import harness, report
from fastimg_bench.contenders import parse_backend
from fastimg_bench.job import BenchJob
from fastimg_bench.stages import StageClock

pytest.importorskip("diffusers")


def test_stage_clock_splits_a_call_into_stages_and_overhead():
    clock = StageClock()
    unet = clock.timed("unet", lambda x: x)
    for _ in range(3):
        unet(1)
    clock.calls["vae_decoder"].append(0.5)
    totals = clock.totals(end_to_end=2.0)
    assert len(totals["unet_calls"]) == 3
    assert totals["vae_decoder"] == 0.5 and totals["text_encoder"] == 0.0
    assert totals["overhead"] == pytest.approx(2.0 - 0.5 - totals["unet"])
    clock.reset()
    assert clock.totals(1.0)["overhead"] == 1.0


@pytest.mark.parametrize(
    "spec,expected",
    [("openvino:bf16", ("openvino", "bf16")), ("onnxruntime", ("onnxruntime", "fp32"))],
)
def test_backend_specs(spec, expected):
    assert parse_backend(spec) == expected


def test_gpu_sides_are_compared_with_diffusers_on_the_gpu_in_their_precision():
    from fastimg_bench.contenders import baseline_for, diffusers_name, parse_diffusers

    assert harness.baselines(["onnxruntime:fp32", "openvino:bf16"]) == [("cpu", "fp32")]
    gpu = ["tensorrt:fp16", "onnxruntime-cuda:fp32", "openvino:fp32", "tensorrt:fp32"]
    assert harness.baselines(gpu) == [("cpu", "fp32"), ("cuda", "fp16"), ("cuda", "fp32")]
    assert baseline_for("onnxruntime-tensorrt:fp16") == ("cuda", "fp16")
    assert baseline_for("openvino:bf16") == ("cpu", "fp32")
    assert diffusers_name() == "diffusers"
    assert parse_diffusers(diffusers_name("cuda", "fp16")) == ("cuda", "fp16")


@pytest.fixture(scope="module")
def record(tiny):
    model, engines = tiny
    job = BenchJob(size=64, steps=4, strength=0.5, guidance=3.0)
    return harness.run(
        str(model), str(engines), job, ["onnxruntime:fp32"], warmup=1, repeats=2, log=lambda m: 0
    )


def test_record_compares_every_side_with_diffusers(record):
    sides = record["sides"]
    assert list(sides) == ["diffusers", "fastimg onnxruntime fp32"]
    ours, ref = sides["fastimg onnxruntime fp32"], sides["diffusers"]
    assert len(ours["seconds"]) == len(ref["seconds"]) == 2
    assert ours["speedup_vs_diffusers"] == pytest.approx(
        ref["median_seconds"] / ours["median_seconds"]
    )
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0  # the fp32 path is the exact one
    assert ours["baseline"] == "diffusers"
    assert record["job"]["unet_calls"] == 2


def test_stages_account_for_the_whole_call(record):
    for side in record["sides"].values():
        st = side["stages_median_seconds"]
        assert all(st[s] > 0 for s in ("vae_encoder", "unet", "vae_decoder"))
        assert 0 <= side["overhead_fraction"] < 1
        first = side["first_call_stages_seconds"]
        assert len(first["unet_calls"]) == 2 and first["text_encoder"] > 0


def test_cold_start_runs_in_a_fresh_process(record):
    for side in record["sides"].values():
        cold = side["cold_start"]
        assert cold["seconds"] >= cold["first_image_seconds"] > 0
        assert 0 < cold["peak_rss_mb"] < 8000
    assert 0 < record["import_runtime_seconds"] < 10


def test_report_writes_table_json_and_chart(record, tmp_path):
    written = report.save(record, tmp_path / "r-s0.5", "fastimg bench ...", images=True)
    data = json.loads((tmp_path / "r-s0.5.json").read_text())
    assert data["command"] == "fastimg bench ..." and "images" not in data
    assert data["sides"]["diffusers"]["median_seconds"] > 0
    chart = Image.open(tmp_path / "r-s0.5.png")
    assert chart.size[0] == 1000 and len(chart.getcolors(2**16)) > 5  # bars, not a blank page
    assert len(written) == 4  # json, chart, one image per side
    lines = report.table(record).splitlines()
    assert lines[2].startswith("diffusers") and "x" in lines[3]


def test_both_sides_use_the_same_tiny_vae_and_batch(tiny_taesd):
    model, engines = tiny_taesd
    job = BenchJob(
        size=64, steps=2, strength=0.5, guidance=0.0, batch=2, vae=str(model.parent / "taesd")
    )
    record = harness.run(
        str(model), str(engines), job, ["onnxruntime:fp32"], warmup=0, repeats=1,
        cold_start=False, log=lambda m: 0,
    )  # fmt: skip
    ours = record["sides"]["fastimg onnxruntime fp32"]
    assert ours["images_per_second"] == pytest.approx(2 / ours["median_seconds"])
    assert ours["seconds_per_image"] == pytest.approx(ours["median_seconds"] / 2)
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0  # diffusers ran with the same TAESD
    assert record["job"]["batch"] == 2 and record["job"]["vae"].endswith("taesd")
    assert "2 image(s) per call, VAE taesd" in report.table(record)


def test_an_lcm_model_is_measured_against_diffusers_lcm_pipeline(tiny_lcm):
    model, engines = tiny_lcm
    job = BenchJob(size=64, steps=4, strength=0.5, guidance=8.0, sampler="lcm")
    record = harness.run(
        str(model), str(engines), job, ["onnxruntime:fp32"], warmup=0, repeats=1,
        cold_start=False, log=lambda m: 0,
    )  # fmt: skip
    assert record["job"]["unet_calls"] == 4  # every LCM step runs; the strength cuts the schedule
    assert record["sides"]["fastimg onnxruntime fp32"]["vs_diffusers"]["psnr_db"] >= 40.0


def test_static_shapes_are_an_openvino_side_of_their_own(tiny):
    from fastimg.errors import InputError
    from fastimg_bench.contenders import parse_shapes

    assert parse_shapes("openvino:bf16:static") == "static"
    assert parse_shapes("openvino:fp32") == parse_shapes("openvino") == "dynamic"
    assert harness.check_backends(["openvino:fp32:auto"]) == ["openvino:fp32:auto"]
    with pytest.raises(InputError, match="static shapes are for onnxruntime-cuda and openvino"):
        harness.check_backends(["onnxruntime:fp32:static"])
    with pytest.raises(InputError, match="'frozen' is not one of"):
        harness.check_backends(["openvino:fp32:frozen"])
    assert "openvino:fp32:static" in harness.default_backends()
    model, engines = tiny
    record = harness.run(
        str(model), str(engines), BenchJob(size=64, steps=4, strength=0.5),
        ["openvino:fp32", "openvino:fp32:static"], warmup=1, repeats=1, log=lambda m: 0,
    )  # fmt: skip
    static = record["sides"]["fastimg openvino fp32 static"]
    assert static["vs_diffusers"]["psnr_db"] >= 40.0
    assert static["vs_fastimg_fp32"]["psnr_db"] >= 60.0  # the same image as the dynamic side
    assert static["cold_start"]["seconds"] > 0  # its fresh process ran static shapes too
    assert static["cold_start_uncached"]["seconds"] > 0  # and once with nothing compiled
    assert "cold_start_uncached" not in record["sides"]["diffusers"]
    assert "with nothing compiled" in report.table(record)
    assert "roofline" in static


def test_sides_too_big_to_share_memory_are_measured_one_at_a_time(tiny, monkeypatch):
    model, engines = tiny
    assert harness.fit_together(str(model), str(engines), 2)  # the tiny model fits, of course
    assert not harness.fit_together(str(model), str(engines), 10**9)
    monkeypatch.setattr(harness, "fit_together", lambda *args: False)
    loaded, said = [], []
    original = harness.FastimgSide.__init__

    def loading(self, engines, job, backend, precision, **kwargs):
        gc.collect()
        loaded.append(sum(isinstance(o, harness.DiffusersSide) for o in gc.get_objects()))
        if backend == "openvino":
            raise EngineError("a 512x512 image needs about 6.2 GiB for the unet (estimated)")
        original(self, engines, job, backend, precision, **kwargs)

    monkeypatch.setattr(harness.FastimgSide, "__init__", loading)
    record = harness.run(
        str(model), str(engines), BenchJob(size=64, steps=4, strength=0.5, guidance=3.0),
        ["onnxruntime:fp32", "openvino:fp32"], warmup=1, repeats=2, cold_start=False,
        log=said.append,
    )  # fmt: skip
    assert record["sides_loaded"] == "one at a time"
    assert any("one at a time" in line or "in turn" in line for line in said)
    assert loaded == [0, 0]  # diffusers was freed before fastimg's engines loaded
    # a side that cannot run here is said and skipped; the others are measured
    assert list(record["sides"]) == ["diffusers", "fastimg onnxruntime fp32"]
    (failed,) = record["failed_sides"].items()
    assert "openvino:fp32" in failed[0] and "6.2 GiB" in failed[1]
    assert "not measured: " in report.table(record) and "each ran alone" in report.table(record)
    ours = record["sides"]["fastimg onnxruntime fp32"]
    assert len(ours["seconds"]) == len(record["sides"]["diffusers"]["seconds"]) == 2
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0
    assert record["stage_gflop"]["unet"] > 0 and record["warmup"] == 1


@pytest.mark.parametrize("layout,encoders", [("tiny_sdxl", 2), ("tiny_sdxl_refiner", 1)])
def test_sdxl_text_encoders_are_timed_as_the_text_stage_on_both_sides(
    layout, encoders, request, photo
):
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from fastimg.diffusion.pipeline import Img2ImgPipeline
    from fastimg_bench.stages import time_diffusers, time_fastimg

    model, engines = request.getfixturevalue(layout)
    image = photo.resize((64, 64))
    ours, theirs = StageClock(), StageClock()
    pipe = Img2ImgPipeline.from_engines(engines, backend="onnxruntime")
    time_fastimg(pipe, ours)
    pipe("a fox", image, strength=0.5, num_inference_steps=2, guidance_scale=0.0, seed=1)
    reference = StableDiffusionXLImg2ImgPipeline.from_pretrained(model)
    reference.set_progress_bar_config(disable=True)
    time_diffusers(reference, theirs)
    generator = torch.Generator().manual_seed(1)
    reference("a fox", image=image, strength=0.5, num_inference_steps=2, guidance_scale=0.0,
              generator=generator)  # fmt: skip
    for clock in (ours, theirs):
        assert len(clock.calls["text_encoder"]) == encoders and "text_encoder_2" not in clock.calls
        assert clock.totals(10.0)["text_encoder"] > 0


def test_share_of_peak_is_the_rate_over_the_peak():
    from fastimg_bench.roofline import efficiency

    stages = {"text_encoder": 0.5, "vae_encoder": 1.0, "unet": 2.0, "vae_decoder": 4.0}
    flops = {"text_encoder": 1e11, "vae_encoder": 1e12, "unet": 4e12, "vae_decoder": 0}
    out = efficiency(stages, flops, peak=4000.0)
    assert out["unet"] == {
        "gflop": 4000.0, "seconds": 2.0, "gflop_per_s": 2000.0, "fraction_of_peak": 0.5
    }  # fmt: skip
    assert out["text_encoder"]["fraction_of_peak"] == pytest.approx(200.0 / 4000.0)
    assert out["vae_decoder"]["fraction_of_peak"] is None  # no FLOPs counted, no share claimed
    untimed = efficiency({**stages, "unet": 0.0}, flops, peak=4000.0)["unet"]
    assert untimed["gflop_per_s"] is None and untimed["fraction_of_peak"] is None


def test_the_roofline_and_best_possible_time_follow_from_the_counted_flops(record):
    flops = record["stage_gflop"]
    for precision, peak in record["matmul_peak_gflop_per_s"].items():
        assert record["best_possible_seconds"][precision] == pytest.approx(
            sum(flops.values()) / peak
        )
    ours = record["sides"]["fastimg onnxruntime fp32"]
    stages = ours["stages_median_seconds"]
    for stage, row in ours["roofline"].items():
        assert row["seconds"] == stages[stage] and row["gflop"] == pytest.approx(flops[stage])
        if row["gflop_per_s"] is not None:
            assert row["gflop_per_s"] == pytest.approx(flops[stage] / stages[stage])
            peak = record["matmul_peak_gflop_per_s"]["fp32"]
            assert row["fraction_of_peak"] == pytest.approx(row["gflop_per_s"] / peak)
    assert "at 100% of the peak the job would take" in report.table(record)


def test_the_unet_flops_are_every_unet_call_of_the_job(tiny):
    """The counter wraps the UNet's forward: the job's 2 calls under guidance (batch 2) count
    2x the FLOPs of one batch-2 call counted directly."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fastimg_bench.contenders import DiffusersSide
    from fastimg_bench.roofline import stage_flops

    model, _ = tiny
    job = BenchJob(size=64, steps=4, strength=0.5, guidance=3.0)
    side = DiffusersSide(model, job)
    counted = stage_flops(side)
    unet = side.pipe.unet
    sample = torch.zeros(2, unet.config.in_channels, 8, 8)
    hidden = torch.zeros(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor([500, 500]), encoder_hidden_states=hidden)
    assert counted["unet"] == job.unet_calls() * counter.get_total_flops()
    assert counted["vae_encoder"] > 0 and counted["vae_decoder"] > 0


def test_a_controlnet_job_is_measured_against_diffusers_controlnet_pipeline(tiny, tiny_controlnet):
    # tiny-controlnet is tiny (the same seed, the same weights) with a ControlNet: diffusers
    # runs tiny's components with that ControlNet, fastimg the engines exported with it
    model, engines = tiny[0], tiny_controlnet[1]
    controlnet = tiny_controlnet[0] / "controlnet"
    job = BenchJob(size=64, steps=4, strength=0.5, guidance=3.0, controlnet=str(controlnet))
    record = harness.run(
        str(model), str(engines), job, ["onnxruntime:fp32"], warmup=0, repeats=1,
        cold_start=False, log=lambda m: 0,
    )  # fmt: skip
    ours, ref = record["sides"]["fastimg onnxruntime fp32"], record["sides"]["diffusers"]
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0  # the same ControlNet and control image
    for side in (ours, ref):  # the ControlNet's calls are their own stage, not overhead
        assert side["stages_median_seconds"]["controlnet"] > 0
        assert side["stages_median_seconds"]["unet"] > 0
    assert record["stage_gflop"]["controlnet"] > 0
    assert record["job"]["controlnet"] == str(controlnet)
    plain = BenchJob(size=64, steps=4, strength=0.5, guidance=3.0)
    without = harness.run(
        str(model), str(tiny[1]), plain, ["onnxruntime:fp32"], warmup=0, repeats=1,
        cold_start=False, log=lambda m: 0,
    )  # fmt: skip
    assert "controlnet" not in without["stage_gflop"]
    # the control changes the image: the ControlNet ran on both sides, not only its clock
    assert (
        harness._fidelity(record["images"]["diffusers"], without["images"]["diffusers"])["psnr_db"]
        < 35
    )


def test_ctrl_c_stops_the_peers_at_once_instead_of_asking_them_to_quit():
    from fastimg_bench.harness import _close_peers

    class Peer:
        def __init__(self):
            self.calls = []

        def close(self):
            self.calls.append("close")

        def stop(self):
            self.calls.append("stop")

        def finish(self):
            self.calls.append("finish")

    asked, interrupted = Peer(), Peer()
    _close_peers([asked])
    _close_peers([interrupted], now=True)
    assert asked.calls == ["close", "finish"] and interrupted.calls == ["stop", "finish"]


def test_an_sdxl_controlnet_job_is_measured_against_diffusers_sdxl_controlnet_pipeline(
    tiny_sdxl, tiny_sdxl_controlnet
):
    # tiny-sdxl-controlnet is tiny-sdxl (the same seed, the same weights) with a ControlNet
    model, engines = tiny_sdxl[0], tiny_sdxl_controlnet[1]
    controlnet = tiny_sdxl_controlnet[0] / "controlnet"
    job = BenchJob(size=64, steps=4, strength=0.5, guidance=3.0, controlnet=str(controlnet))
    record = harness.run(
        str(model), str(engines), job, ["onnxruntime:fp32"], warmup=0, repeats=1,
        cold_start=False, log=lambda m: 0,
    )  # fmt: skip
    ours, ref = record["sides"]["fastimg onnxruntime fp32"], record["sides"]["diffusers"]
    assert ours["vs_diffusers"]["psnr_db"] >= 40.0
    for side in (ours, ref):
        assert side["stages_median_seconds"]["controlnet"] > 0
    assert record["stage_gflop"]["controlnet"] > 0


def test_the_sides_follow_the_graphs_a_folder_has(monkeypatch):
    """A folder exported in fp16 has no fp32 graphs: its ONNX Runtime side is fp16, and fp32
    asked of it is refused before any side loads; an fp32 folder never gets a CPU fp16 side."""
    from fastimg.backends import select
    from fastimg.errors import InputError
    from tests.manifests import exported_in

    monkeypatch.setattr(select, "installed", lambda name: name == "onnxruntime")
    monkeypatch.setattr(select, "gpu_present", lambda: False)
    half, full = exported_in("fp16"), exported_in("fp32")
    assert harness.default_backends() == harness.default_backends(full) == ["onnxruntime:fp32"]
    assert harness.default_backends(half) == ["onnxruntime:fp16"]
    assert harness.check_backends(["onnxruntime:fp16"], half) == ["onnxruntime:fp16"]
    with pytest.raises((InputError, EngineError), match="exported in fp16"):
        harness.check_backends(["onnxruntime"], half)  # a bare name is fp32
