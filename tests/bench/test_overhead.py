import json

import pytest


@pytest.mark.parametrize("shapes", ["dynamic", "static"])
def test_the_overhead_record_says_the_shapes_its_call_ran_with(tiny, tmp_path, shapes):
    pytest.importorskip("openvino")
    from fastimg_bench.overhead import main

    out = tmp_path / "overhead.json"
    argv = [str(tiny[1]), "--backend", "openvino", "--precision", "fp32", "--shapes", shapes,
            "--size", "64", "--real", "1", "--repeats", "2", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["shapes"] == shapes and f"--shapes {shapes}" in record["command"]
    assert record["backend"] == "openvino" and record["size"] == 64
    assert 0 < record["outside_engines_s"] and 0 < record["share_of_call"] < 1
