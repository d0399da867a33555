"""The batching measurement: a record of seconds per image for each batch size, per backend."""

import json

from fastimg_bench import batching


def test_the_record_names_each_batch_size_and_its_gain(tiny, tmp_path, capsys):
    out = tmp_path / "batching.json"
    args = [str(tiny[1]), "--backend", "onnxruntime:fp32", "--size", "64", "--batch", "1,2",
            "--repeats", "2", "-o", str(out)]  # fmt: skip
    assert batching.main(args) == 0
    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m fastimg_bench.batching ")
    assert record["machine"]["cores"] >= 1 and record["job"]["size"] == 64
    (side,) = record["sides"]
    assert (side["backend"], side["precision"]) == ("onnxruntime", "fp32")
    assert set(side["seconds_per_image"]) == {"1", "2"}
    assert all(len(v) == 2 and min(v) > 0 for v in side["all_seconds_per_image"].values())
    assert side["gain_over_first"]["1"] == 1.0 and side["gain_over_first"]["2"] > 0
    assert "onnxruntime fp32: per image" in capsys.readouterr().out
