"""The hostile-client bench against a real `fastimg serve` on the tiny model: what it records
(the load beside idle and slow sockets, the memory around an amplification request), never its
timings."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastimg_bench import hostile  # noqa: E402


def test_the_hostile_bench_records_each_phase_and_loses_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "hostile.json"
    argv = [str(tiny[1]), "--clients", "2", "--seconds", "3", "--idle", "6", "--slow", "2",
            "--seeds", "2", "--amplify-images", "2", "--amplify-size", "256",
            "--header-timeout", "1", "--backend", "onnxruntime", "-o", str(out)]  # fmt: skip

    assert hostile.main(argv) == 0

    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m fastimg_bench.hostile ")
    assert record["machine"]["cpu"] and record["date_utc"]
    assert set(record["phases"]) == {"alone_before", "beside_hostile", "alone_after"}
    for phase in record["phases"].values():
        assert phase["by_status"]["200"] >= 1 and phase["lost"] == phase["corrupted"] == 0
    assert record["lost"] == record["corrupted"] == 0 and record["server_exit_code"] == 0
    p95 = [record["phases"][k]["latency_200_seconds"]["p95"] for k in record["phases"]]
    assert record["p95_beside_hostile_over_alone"] == pytest.approx(
        p95[1] / ((p95[0] + p95[2]) / 2), rel=1e-2
    )
    idle, slow = record["hostile_sockets"]["idle"], record["hostile_sockets"]["slow"]
    assert idle["held_at_once"] == 6 and slow["held_at_once"] == 2
    assert idle["opened"] >= 6 and slow["opened"] >= 2
    # A request head must come within --header-timeout 1: the server ends both kinds.
    assert idle["closed_by_server"] >= 6 and slow["closed_by_server"] >= 2
    assert slow["open_seconds_max"] < 3
    amp = record["amplification"]
    statuses = [r["status"] for r in amp["requests"]]
    assert statuses == [200, 422, 422, 200]  # the bombs refused before decoding
    assert "larger than these engines take" in amp["requests"][1]["refusal"]
    assert len(amp["rss_after_each_request_mb"]) == 4
    assert amp["rss_before_mb"] > 0 and amp["rss_after_mb"] > 0
    assert isinstance(amp["rss_back_within_10_percent"], bool)
    assert "p95 beside / alone" in capsys.readouterr().out
