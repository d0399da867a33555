"""The load script against a real `fastimg serve` process on the tiny model: structure and
correctness of what it records (never its timings)."""

import json
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastimg_bench import load  # noqa: E402


def test_load_run_loses_and_corrupts_nothing_and_records_it(tiny, tmp_path, capsys):
    out = tmp_path / "load.json"
    argv = [str(tiny[1]), "--clients", "2", "--seconds", "6", "--requests", "12", "--seeds", "3",
            "--max-queue", "0", "--backend", "onnxruntime", "-o", str(out)]  # fmt: skip

    assert load.main(argv) == 0

    record = json.loads(out.read_text())
    assert record["command"].startswith("python -m fastimg_bench.load ")
    assert "--max-queue 0" in record["command"]
    assert record["machine"]["cores"] >= 1 and record["machine"]["cpu"]
    assert record["versions"]["fastimg"]
    assert record["backend"] == "onnxruntime"
    statuses = record["by_status"]
    assert set(statuses) == {"200", "429", "504", "other"}
    assert 1 <= record["requests"] <= 12 == record["settings"]["max_requests"]
    assert sum(statuses.values()) + record["lost"] == record["requests"]
    assert len(record["records"]) == record["requests"]
    assert record["lost"] == 0 and record["corrupted"] == 0
    assert statuses["200"] >= 1 and statuses["504"] == statuses["other"] == 0
    assert set(record["seeds_used"]) <= {0, 1, 2}
    assert [r["index"] for r in record["records"]] == list(range(record["requests"]))
    for r in record["records"]:
        assert r["seed"] == r["index"] % 3
        assert r["status"] in (200, 429)
        assert (r["status"] == 200) == ("corrupted" in r)
    latency = record["latency_200_seconds"]
    assert latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    rss = record["server_rss"]
    for key in ("spawn_mb", "start_mb", "after_warmup_mb", "peak_mb", "end_mb"):
        assert rss[key] > 0
    assert rss["peak_mb"] >= rss["end_mb"] and isinstance(rss["flat"], bool)
    assert record["seed_0_alone_after_load_matches"] is True
    assert record["server_exit_code"] == 0 and record["server_exited_cleanly"]
    assert record["requests_per_engine_run"] == 1.0  # nothing queued, so nothing batched
    assert "lost / corrupted" in capsys.readouterr().out


# `fastimg serve` with one engine run held: the server's worker waits in that run until
# `waiters` more requests are queued behind it, so that the next run has them to take together.
HOLD_ONE_RUN = """
import sys, time
from fastimg.cli import cli
from fastimg.serve.service import Service

held_run, waiters = int(sys.argv[1]), int(sys.argv[2])
runs, work = [], Service._work

def held_work(self, entries):
    runs.append(len(entries))
    if len(runs) == held_run:
        deadline = time.monotonic() + 300  # (only where the clients never send)
        while self.admission.waiting < waiters:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{waiters} requests never queued behind the held run")
            time.sleep(0.01)
    return work(self, entries)

Service._work = held_work
cli(["serve", *sys.argv[3:]], prog_name="fastimg")
"""


def test_queued_requests_are_batched_under_load_and_each_image_is_still_its_own(
    tiny, tmp_path, monkeypatch
):
    clients, seeds = 4, 4

    class HeldServer(load.Server):
        def command(self):  # the load's first run (after one alone per seed) is held
            held = [str(seeds + 1), str(clients - 1)]
            return [sys.executable, "-c", HOLD_ONE_RUN, *held, *self.args]

    monkeypatch.setattr(load, "Server", HeldServer)
    out = tmp_path / "batched.json"
    # (bounded by its 24 requests alone: no client may miss the load by starting late)
    argv = [str(tiny[1]), "--clients", str(clients), "--seconds", "600", "--requests", "24",
            "--seeds", str(seeds), "--max-queue", "8", "--max-batch", "4",
            "--backend", "onnxruntime", "-o", str(out)]  # fmt: skip

    assert load.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["max_batch"] == 4
    assert record["lost"] == 0 and record["corrupted"] == 0  # each checked against it alone
    assert record["by_status"]["200"] == record["requests"] == 24
    # The 3 requests queued behind the held run ran as one: 2 engine runs fewer, at least.
    assert record["engine_runs_during_load"] <= record["requests"] - (clients - 2)
    assert 1.0 < record["requests_per_engine_run"] <= 4.0


def test_the_load_through_a1111s_endpoint_loses_and_corrupts_nothing(tiny, tmp_path):
    out = tmp_path / "load.json"
    argv = [str(tiny[1]), "--clients", "2", "--seconds", "6", "--requests", "8", "--seeds", "2",
            "--backend", "onnxruntime", "--api", "a1111", "-o", str(out)]  # fmt: skip

    assert load.main(argv) == 0

    record = json.loads(out.read_text())
    assert record["settings"]["api"] == "a1111" and "--api a1111" in record["command"]
    assert record["lost"] == 0 and record["corrupted"] == 0
    assert record["by_status"]["200"] >= 1 and record["seed_0_alone_after_load_matches"]
    assert {r["status"] for r in record["records"]} <= {200, 429}


def test_an_a1111_answer_is_read_as_a_v1_img2img_one():
    import base64

    import httpx

    body = {"images": [base64.b64encode(b"PNG").decode()], "info": json.dumps({"seed": 7})}
    read = load.A1111Answer(httpx.Response(200, json=body))
    assert read.content == b"PNG" and read.headers["x-fastimg-seed"] == "7"
    broken = load.A1111Answer(httpx.Response(200, json={"images": []}))
    assert broken.content == b"" and broken.headers["x-fastimg-seed"] == "None"


def test_a_pixel_changed_or_a_wrong_seed_counts_as_corrupted():
    import numpy as np

    reference = np.zeros((8, 8, 3), np.uint8)

    class Response:
        def __init__(self, array, seed):
            import io

            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            self.content, self.headers = buffer.getvalue(), {"x-fastimg-seed": str(seed)}

    assert load._matches(Response(reference, 3), 3, reference)
    assert not load._matches(Response(reference, 4), 3, reference)
    changed = reference.copy()
    changed[2, 5, 1] = 1
    assert not load._matches(Response(changed, 3), 3, reference)
    broken = Response(reference, 3)
    broken.content = broken.content[:20]
    assert not load._matches(broken, 3, reference)


def test_counts_add_up_in_the_summary():
    records = [
        {"index": 0, "seed": 0, "status": 200, "latency_s": 1.0, "corrupted": False},
        {"index": 1, "seed": 1, "status": 429, "latency_s": 0.1},
        {"index": 2, "seed": 2, "status": 504, "latency_s": 3.0},
        {"index": 3, "seed": 0, "status": 503, "latency_s": 0.1},
        {"index": 4, "seed": 1, "status": None, "latency_s": 0.1, "error": "ReadError"},
        {"index": 5, "seed": 2, "status": 200, "latency_s": 2.0, "corrupted": True},
    ]
    summary = load.summarize(records, wall=4.0)
    assert summary["by_status"] == {"200": 2, "429": 1, "504": 1, "other": 1}
    assert summary["other_statuses"] == [503]
    assert summary["lost"] == 1 and summary["corrupted"] == 1
    assert summary["images_per_second"] == 0.5
    assert summary["latency_200_seconds"]["p50"] == 1.5
