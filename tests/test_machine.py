"""What fastimg reports about the installed packages."""

import importlib.metadata

from fastimg import machine


def test_a_module_reports_the_distribution_that_provides_it(monkeypatch):
    monkeypatch.setattr(
        importlib.metadata, "packages_distributions", lambda: {"cupy": ["cupy-cuda13x"]}
    )
    versions = {"cupy-cuda13x": "14.2.0", "numpy": "2.4.6"}
    monkeypatch.setattr(machine, "package_version", versions.get)
    assert machine.module_version("cupy") == "14.2.0 (cupy-cuda13x)"
    assert machine.module_version("numpy") == "2.4.6"
    assert machine.module_version("tensorrt") is None


def test_an_installed_module_reports_its_own_version():
    assert machine.module_version("numpy") == importlib.metadata.version("numpy")


def test_bench_records_name_the_gpus_where_there_are_any(monkeypatch):
    from fastimg import gpu

    monkeypatch.setattr(gpu, "gpus", lambda: [])
    assert "gpus" not in machine.machine_record()
    h200 = gpu.parse_nvidia_smi("0, NVIDIA H200, 9.0, 143771, 580.159.04\n")
    monkeypatch.setattr(gpu, "gpus", lambda: h200)
    record = machine.machine_record()
    assert record["gpus"] == ["NVIDIA H200, compute capability 9.0, 143771 MiB, driver 580.159.04"]
    assert record["cores"] >= 1 and isinstance(record["features"], list)
