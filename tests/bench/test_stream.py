"""The stream bench's sides: diffusers on the CPU (every image's reference) and, for a GPU
side, on that GPU in its precision, each fastimg side's speed-up against the latter."""

from PIL import Image

from fastimg_bench import stream
from fastimg_bench.job import BenchJob


def _side(name: str, fps: float, frames: int, shade: int, spec: str | None = None) -> dict:
    side = {
        "name": name,
        "seconds": frames / fps,
        "fps": fps,
        "frame_seconds": stream.spread([1 / fps] * frames),
        "latency_seconds": stream.spread([1 / fps] * frames),
        "skipped": 0,
        "images": [Image.new("RGB", (8, 8), (shade, shade, shade))] * frames,
    }
    return side if spec is None else {**side, "backend_spec": spec}


def test_a_gpu_side_is_measured_against_diffusers_on_the_gpu_in_its_precision(monkeypatch):
    fastimg_fps = {"onnxruntime-cuda:fp16": 90.0, "onnxruntime:fp32": 2.0}
    diffusers_fps = {("cpu", "fp32"): 0.5, ("cuda", "fp16"): 30.0}
    ran = []

    def fastimg(engines, job, spec, options, frames, warmup, suffix=""):
        name = f"fastimg stream {spec}"
        return _side(name, fastimg_fps[spec], len(frames), 100, spec)

    def diffusers(model, job, frames, warmup, device="cpu", precision="fp32"):
        ran.append((device, precision))
        name = stream.diffusers_name(device, precision)
        return _side(name, diffusers_fps[device, precision], len(frames), 110)

    monkeypatch.setattr(stream, "run_fastimg", fastimg)
    monkeypatch.setattr(stream, "run_diffusers", diffusers)
    job = BenchJob(size=64, steps=2, strength=0.5, guidance=0.0, sampler="euler_a")
    record = stream.run("m", "e", job, list(fastimg_fps), {}, 4, 0, log=lambda m: None)
    assert ran == [("cpu", "fp32"), ("cuda", "fp16")]  # the CPU reference first, once
    sides = record["sides"]
    gpu, cpu = (
        sides["fastimg stream onnxruntime-cuda:fp16"],
        sides["fastimg stream onnxruntime:fp32"],
    )
    assert gpu["speedup_vs_diffusers"] == 3.0 and gpu["speedup_against"] == "diffusers cuda fp16"
    assert cpu["speedup_vs_diffusers"] == 4.0 and cpu["speedup_against"] == "diffusers"
    for side in (gpu, cpu):  # every image against diffusers' on the CPU in fp32
        assert 25 < side["psnr_first_frame_vs_diffusers_db"] < 30
    assert "speedup_vs_diffusers" not in sides["diffusers cuda fp16"]
