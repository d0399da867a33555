import pytest

from fastimg.backends.openvino import compile_config, compiled_precision

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
