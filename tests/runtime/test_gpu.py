from fastimg import gpu


def test_nvidia_smi_output_is_parsed():
    out = "0, NVIDIA H100 80GB HBM3, 9.0, 81559, 570.86.15\n1, NVIDIA L4, 8.9, [N/A], 570.86.15\n"
    found = gpu.parse_nvidia_smi(out)
    assert [g.name for g in found] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert found[0].compute_capability == "9.0" and found[0].memory_mib == 81559
    assert found[1].memory_mib == 0 and found[1].driver == "570.86.15"
    assert gpu.parse_nvidia_smi("No devices were found\n") == []


def test_without_a_gpu_the_capability_error_points_to_the_cpu_backends(monkeypatch):
    import pytest

    from fastimg.errors import EngineError

    monkeypatch.setattr(gpu, "gpus", lambda: [])
    with pytest.raises(EngineError, match="--backend openvino or onnxruntime"):
        gpu.compute_capability()
