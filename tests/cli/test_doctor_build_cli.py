import sys

import pytest
from click.testing import CliRunner

from fastimg.cli import cli


def test_doctor_describes_the_machine_and_every_backend():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    for label in ("cpu", "gpu", "onnxruntime providers", "backend tensorrt", "backend openvino"):
        assert label in result.output
    assert "backend onnxruntime " in result.output and "ready" in result.output


def row(output: str, label: str) -> str:
    """The line of doctor's check table for `label` ('openvino fp32')."""
    (line,) = [ln for ln in output.splitlines() if ln.strip().startswith(label + " ")]
    return line


def test_doctor_check_compares_each_backend_with_the_cpu_reference(tiny):
    pytest.importorskip("openvino")
    result = CliRunner().invoke(cli, ["doctor", "--check", str(tiny[1])])
    assert result.exit_code == 0, result.output
    assert row(result.output, "openvino fp32").split()[2] == "ok"
    assert "PSNR" in row(result.output, "openvino fp32")
    static = row(result.output, "openvino bf16, static shapes")
    assert static.split()[4] == "ok" and "PSNR" in static
    assert row(result.output, "tensorrt fp16").split()[2] == "skipped"


def test_doctor_check_survives_a_native_crash_in_one_backend(tiny, monkeypatch):
    pytest.importorskip("openvino")
    from fastimg.workflows import doctor

    crash = (
        "import ctypes, sys\n"
        "if sys.argv[2:4] == ['openvino', 'fp32']:\n"
        "    ctypes.string_at(0)  # a segmentation fault, as inside a native engine\n"
        f"{doctor.WORKER}\n"
    )
    monkeypatch.setattr(doctor, "WORKER", crash)
    result = CliRunner().invoke(cli, ["doctor", "--check", str(tiny[1])])
    assert result.exit_code == 1
    crashed = row(result.output, "openvino fp32")
    assert crashed.split()[2] == "failed" and "SIGSEGV" in crashed
    assert row(result.output, "openvino bf16").split()[2] == "ok"  # the doctor went on
    assert "openvino fp32" in result.output.splitlines()[-1]


def test_doctor_check_fails_when_a_backend_computes_wrong(tiny, monkeypatch):
    pytest.importorskip("openvino")
    from fastimg.workflows import doctor

    monkeypatch.setitem(doctor.MIN_PSNR, "bf16", 200.0)  # no real image reaches this
    result = CliRunner().invoke(cli, ["doctor", "--check", str(tiny[1])])
    assert result.exit_code == 1
    assert row(result.output, "openvino bf16").split()[2] == "wrong"
    assert row(result.output, "openvino bf16, static shapes").split()[4] == "wrong"
    assert row(result.output, "openvino fp32").split()[2] == "ok"
    assert "openvino bf16; openvino bf16, static shapes" in result.output.splitlines()[-1]


def test_build_without_tensorrt_names_the_extra(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(cli, ["build", str(tiny[1])])
    assert result.exit_code == 1 and "fastimg[tensorrt]" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--height", "500"], "multiple of 8"),
        (["--width", "768-256"], "min <= opt <= max"),
        (["--batch", "x"], "must be N"),
        (["--opt-level", "9"], "0<=x<=5"),
        (["--precision", "int8"], "is not one of"),
    ],
)
def test_build_refuses_bad_profiles_before_touching_anything(tiny, args, message):
    result = CliRunner().invoke(cli, ["build", str(tiny[1]), *args])
    assert result.exit_code in (1, 2) and message in result.output
    assert not (tiny[1] / "tensorrt").exists()


def test_build_on_a_folder_that_is_not_an_engine(tmp_path):
    result = CliRunner().invoke(cli, ["build", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.json" in result.output


def test_the_check_job_takes_a_size_the_tensorrt_plans_admit(tiny, tmp_path, monkeypatch):
    import shutil

    from fastimg import gpu
    from fastimg.backends import select
    from fastimg.backends.tensorrt_plans import find_plans
    from fastimg.engine_folder.manifest import load_manifest
    from fastimg.engine_folder.profiles import Profile
    from fastimg.workflows import doctor
    from tests.plan_sets import write_plan_sets

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    static = Profile((512,) * 3, (512,) * 3)  # what  fastimg build  makes by default
    dynamic = Profile((64, 64, 256), (64, 64, 256))
    write_plan_sets(engines, [(static, "8.9", "fp16"), (dynamic, "8.9", "fp32")])
    monkeypatch.setattr(gpu, "current_device", lambda device=None: 0)

    monkeypatch.setattr(
        select,
        "tensorrt_plans_here",
        lambda manifest, device=None, **request: find_plans(manifest, "10.13.0", "8.9", **request),
    )
    manifest = load_manifest(engines)
    assert doctor.check_size(manifest, "tensorrt", "fp16", None) == (512, 512)
    assert doctor.check_size(manifest, "tensorrt", "fp32", None) == doctor.CHECK_SIZE
    assert doctor.check_size(manifest, "openvino", "bf16", None) == doctor.CHECK_SIZE


def test_build_of_a_controlnet_folder_builds_its_controlnet_and_residual_unet(
    tiny_controlnet, tmp_path, monkeypatch
):
    """fastimg build as a user types it, on a ControlNet folder (a stand-in TensorRT)."""
    import shutil

    from fastimg_export import trt_build
    from tests.export.test_trt_build import FakeTensorRT

    engines = shutil.copytree(tiny_controlnet[1], tmp_path / "engines")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT())
    monkeypatch.setattr(trt_build, "device_properties", lambda device=None: ("NVIDIA L4", "8.9"))
    result = CliRunner().invoke(cli, ["build", str(engines), "--height", "64", "--width", "88"])
    assert result.exit_code == 0, result.output
    for component in ("unet", "controlnet", "unet_control"):
        assert f"building {component} (fp16, h64_w88_b1)" in result.output
        assert len(list((engines / "tensorrt").glob(f"*/{component}.plan"))) == 1
    assert "ControlNets" in CliRunner().invoke(cli, ["build", "--help"]).output
