"""Load on `fastimg serve`: N concurrent clients for T seconds (or MAX requests) on loopback.

    python -m fastimg_bench.load ENGINES --clients 4 --seconds 20 -o OUT.json

The server runs in its own process (`fastimg serve` on 127.0.0.1, a free port), so that its
memory can be sampled from /proc every 0.5 s. Once /v1/health says ready, one request per seed
of the pool is made alone (the warm-up, and each seed's reference image); then the clients
send multipart img2img requests on one test image, each with the next seed of the pool, and
every 200's pixels are compared with its seed's reference ("corrupted" when they differ);
a request that gets no response at all is "lost". After a 429 a client waits its Retry-After
(at most 1 s) before its next request. After the load, seed 0 is asked for alone once more and
must give the reference image again. Finally the server gets SIGTERM and must exit 0.

With --api a1111 the clients call A1111's /sdapi/v1/img2img instead (JSON, the image in base64,
the seed in `info`), with the same settings, references and checks.

Reported: p50/p95/p99 latency of the 200s, images/s, counts by status, lost, corrupted, and the
server's RSS (when ready, after warm-up, peak, end; flat when the end is within 10 % of the value
after warm-up). The exit status is 1 when anything was lost or corrupted, the image after the
load differed, or the server did not exit 0.
"""

import argparse
import base64
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .record import machine as machine_record
from .record import versions as package_versions

RSS_INTERVAL = 0.5  # seconds between samples of the server's VmRSS
FLAT_TOLERANCE = 0.10  # end RSS within this fraction of the RSS after warm-up
MAX_RETRY_WAIT = 1.0  # seconds a client honours of a 429's Retry-After, at most
PROMPT = "a watercolour painting of a lighthouse"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """The process' resident set size in MiB, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples a process' VmRSS every RSS_INTERVAL seconds: (seconds since start, MiB)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []
        self.started_at = time.monotonic()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(RSS_INTERVAL)

    def sample(self) -> float | None:
        value = rss_mb(self.pid)
        if value is not None and value < 1:  # (a process still being exec'd has (almost) no
            value = None  # memory of its own yet; an interpreter holds several MiB)
        if value is not None:
            self.samples.append((round(time.monotonic() - self.started_at, 2), round(value, 1)))
        return value

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Server:
    """`fastimg serve ENGINES` in a subprocess on a free loopback port, its output in a file."""

    def __init__(self, engines: str, serve_args: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fastimg-load-server-", suffix=".log")
        self.args = [str(engines), "--host", "127.0.0.1", "--port", str(self.port), *serve_args]
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.rss = RssSampler(self.proc.pid)
        self.rss.start()

    def command(self) -> list[str]:
        """The command line that starts the server (a test may start it another way)."""
        return [sys.executable, "-m", "fastimg", "serve", *self.args]

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, client, timeout: float) -> float:
        """Seconds until /v1/health said ready; raises if the server exits or takes too long."""
        import httpx

        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.proc.returncode} before it was ready:\n"
                    + self.tail()
                )
            try:
                if client.get(f"{self.url}/v1/health", timeout=5).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout:
                raise RuntimeError(
                    f"the server was not ready within {timeout:g} s:\n" + self.tail()
                )
            time.sleep(0.25)

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM, then wait; the exit code, or None when it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        self.rss.stop()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.rss.stop()
        self.log.close()


def test_image(size: int) -> bytes:
    """The bundled example picture, size x size, as PNG bytes."""
    from PIL import Image

    from fastimg.media.images import EXAMPLE_IMAGE

    with Image.open(EXAMPLE_IMAGE) as image:
        picture = image.convert("RGB").resize((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def post(client, url: str, image: bytes, seed: int, settings: dict, timeout: float,
         api: str = "fastimg"):  # fmt: skip
    """One img2img request on `api` (fastimg: /v1/img2img; a1111: /sdapi/v1/img2img, answered
    as /v1/img2img's: its image as the content, its seed in X-Fastimg-Seed)."""
    if api == "a1111":
        return _post_a1111(client, url, image, seed, settings, timeout)
    return client.post(
        f"{url}/v1/img2img",
        files={"image": ("load.png", image, "image/png")},
        data={**settings, "seed": str(seed), "format": "png"},
        timeout=timeout,
    )


class A1111Answer:
    """A 200 of /sdapi/v1/img2img as the load reads a /v1/img2img one."""

    def __init__(self, response):
        self.status_code, self.text = response.status_code, response.text[:200]
        try:  # (an answer that cannot be read has no seed and no image: corrupted)
            answer = response.json()
            seed = json.loads(answer["info"])["seed"]
            self.content = base64.b64decode(answer["images"][0])
        except (ValueError, KeyError, IndexError, TypeError):
            seed, self.content = None, b""
        self.headers = {**response.headers, "x-fastimg-seed": str(seed)}


def _post_a1111(client, url: str, image: bytes, seed: int, settings: dict, timeout: float):
    """The load's request as A1111's JSON, on /sdapi/v1/img2img."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        width, height = opened.size
    body = {"init_images": [base64.b64encode(image).decode("ascii")],
            "prompt": settings["prompt"], "steps": int(settings["steps"]),
            "denoising_strength": float(settings["strength"]),
            "cfg_scale": float(settings["guidance"]), "seed": seed, "width": width,
            "height": height}  # fmt: skip
    response = client.post(f"{url}/sdapi/v1/img2img", json=body, timeout=timeout)
    return A1111Answer(response) if response.status_code == 200 else response


class Load:
    """The shared state of the clients: the request budget, the seeds, the records."""

    def __init__(self, max_requests: int | None, seconds: float, seeds: int):
        self.max_requests, self.seconds, self.seeds = max_requests, seconds, seeds
        self.lock = threading.Lock()
        self.sent = 0
        self.records: list[dict] = []
        self.deadline = 0.0

    def claim(self) -> int | None:
        """The next request's index, or None when the time or the request budget is spent."""
        with self.lock:
            if time.monotonic() >= self.deadline:
                return None
            if self.max_requests is not None and self.sent >= self.max_requests:
                return None
            self.sent += 1
            return self.sent - 1


def client_loop(load: Load, url: str, image: bytes, settings: dict, timeout: float,
                references: dict, client_id: int, api: str = "fastimg") -> None:  # fmt: skip
    import httpx

    with httpx.Client() as client:
        while (index := load.claim()) is not None:
            seed = index % load.seeds
            record = {"client": client_id, "index": index, "seed": seed}
            started = time.monotonic()
            try:
                response = post(client, url, image, seed, settings, timeout, api)
            except httpx.HTTPError as exc:
                record.update(status=None, error=f"{type(exc).__name__}: {exc}")
            else:
                record["status"] = response.status_code
                if response.status_code == 200:
                    record["corrupted"] = not _matches(response, seed, references[seed])
                elif response.status_code == 429:
                    record["retry_after"] = response.headers.get("retry-after")
            record["latency_s"] = round(time.monotonic() - started, 4)
            with load.lock:
                load.records.append(record)
            if record["status"] == 429:
                try:
                    wait = min(float(record["retry_after"]), MAX_RETRY_WAIT)
                except (TypeError, ValueError):
                    wait = MAX_RETRY_WAIT
                time.sleep(max(0.0, min(wait, load.deadline - time.monotonic())))


def _matches(response, seed: int, reference: np.ndarray) -> bool:
    if response.headers.get("x-fastimg-seed") != str(seed):
        return False
    try:
        got = pixels(response.content)
    except Exception:
        return False
    return got.shape == reference.shape and bool(np.array_equal(got, reference))


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "mean": a.mean(), "max": a.max()}


def run_clients(
    load: Load,
    clients: int,
    url: str,
    image: bytes,
    settings: dict,
    timeout: float,
    references: dict,
    api: str = "fastimg",
) -> float:
    """`clients` client loops against `url` until `load`'s budget or seconds run out; the
    seconds they ran."""
    threads = [
        threading.Thread(
            target=client_loop,
            args=(load, url, image, settings, timeout, references, k, api),
            daemon=True,
        )
        for k in range(clients)
    ]
    began = time.monotonic()
    load.deadline = began + load.seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


def summarize(records: list[dict], wall: float) -> dict:
    by_status = {"200": 0, "429": 0, "504": 0, "other": 0}
    for r in records:
        if r["status"] is not None:
            key = str(r["status"]) if str(r["status"]) in by_status else "other"
            by_status[key] += 1
    ok = [r for r in records if r["status"] == 200]
    latency = {
        k: None if v is None else round(float(v), 4)
        for k, v in _percentiles([r["latency_s"] for r in ok]).items()
    }
    return {
        "requests": len(records),
        "by_status": by_status,
        "other_statuses": sorted(
            {
                r["status"]
                for r in records
                if r["status"] is not None and str(r["status"]) not in by_status
            }
        ),
        "lost": sum(r["status"] is None for r in records),
        "corrupted": sum(bool(r.get("corrupted")) for r in ok),
        "images_per_second": len(ok) / wall if wall > 0 else None,
        "latency_200_seconds": latency,
        "load_wall_seconds": wall,
        "seeds_used": sorted({r["seed"] for r in records}),
    }


def batch_counts(client, url: str) -> tuple[float, float]:
    """(requests run, engine runs) so far, from the server's fastimg_batch_requests histogram."""
    values = {}
    for line in client.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("fastimg_batch_requests_sum", "fastimg_batch_requests_count"):
            values[name] = float(value)
    return values.get("fastimg_batch_requests_sum", 0.0), values.get(
        "fastimg_batch_requests_count", 0.0
    )


def run(engines: str, clients: int, seconds: float, max_requests: int | None = None,
        size: int = 64, steps: int = 2, strength: float = 0.6, guidance: float = 5.0,
        seeds: int = 4, workers: int = 1, max_queue: int = 16, timeout: float = 300.0,
        backend: str = "auto", ready_timeout: float = 900.0, log=print,
        max_batch: int | None = None, api: str = "fastimg") -> dict:  # fmt: skip
    """Start the server, load it, check the results, stop it; the full record."""
    import httpx

    settings = {
        "prompt": PROMPT,
        "steps": str(steps),
        "strength": str(strength),
        "guidance": str(guidance),
    }
    serve_args = [
        "--workers",
        str(workers),
        "--max-queue",
        str(max_queue),
        "--timeout",
        str(timeout),
        "--backend",
        backend,
    ]
    if max_batch is not None:
        serve_args += ["--max-batch", str(max_batch)]
    image = test_image(size)
    client_timeout = timeout + 60  # the server answers 504 by its deadline; past this: lost
    server = Server(engines, serve_args)
    try:
        with httpx.Client() as probe:
            log(f"server pid {server.proc.pid} on {server.url}: loading {engines}")
            ready_s = server.wait_ready(probe, ready_timeout)
            rss_ready = server.rss.sample()
            log(f"ready after {ready_s:.1f} s; reference images for seeds 0..{seeds - 1}")
            references, reference_s = {}, []
            for seed in range(seeds):
                started = time.monotonic()
                response = post(probe, server.url, image, seed, settings, client_timeout, api)
                reference_s.append(time.monotonic() - started)
                if response.status_code != 200:
                    raise RuntimeError(
                        f"the reference request for seed {seed} got {response.status_code}: "
                        f"{response.text[:500]}"
                    )
                references[seed] = pixels(response.content)
            info = probe.get(f"{server.url}/v1/info").json()
            batches_before = batch_counts(probe, server.url)
        rss_warm = server.rss.sample()
        load = Load(max_requests, seconds, seeds)
        log(
            f"{clients} clients for {seconds:g} s"
            + (f" or {max_requests} requests" if max_requests else "")
        )
        began = time.monotonic()
        wall = run_clients(load, clients, server.url, image, settings, client_timeout,
                           references, api)  # fmt: skip
        load_start_t, load_end_t = (
            began - server.rss.started_at,
            time.monotonic() - server.rss.started_at,
        )
        rss_end = server.rss.sample()
        during = [mb for t, mb in server.rss.samples if load_start_t <= t <= load_end_t + 0.1]
        with httpx.Client() as probe:  # the server alone again: the same image for seed 0
            after = batch_counts(probe, server.url)
            requests_run, runs = (a - b for a, b in zip(after, batches_before, strict=True))
            response = post(probe, server.url, image, 0, settings, client_timeout, api)
            alone_after = response.status_code == 200 and _matches(response, 0, references[0])
        log("stopping the server (SIGTERM)")
        exit_code = server.terminate(timeout=60)
        samples = list(server.rss.samples)
    finally:
        server.close()
    summary = summarize(load.records, wall)
    all_rss = [mb for _, mb in samples]
    rss = {
        "spawn_mb": all_rss[0] if all_rss else None,
        "start_mb": None if rss_ready is None else round(rss_ready, 1),
        "after_warmup_mb": None if rss_warm is None else round(rss_warm, 1),
        "peak_during_load_mb": max(during) if during else None,
        "peak_mb": max(all_rss) if all_rss else None,
        "end_mb": None if rss_end is None else round(rss_end, 1),
        "flat": (
            rss_end is not None
            and rss_warm is not None
            and abs(rss_end - rss_warm) <= FLAT_TOLERANCE * rss_warm
        ),
        "flat_rule": f"end within {FLAT_TOLERANCE:.0%} of the value after warm-up",
        "samples_seconds_mb": samples[:: max(1, len(samples) // 200)],
    }
    return {
        "engines": str(engines),
        "model": info.get("model"),
        "backend": info.get("backend"),
        "precision": info.get("precision"),
        "settings": {
            "clients": clients,
            "seconds": seconds,
            "max_requests": max_requests,
            "size": size,
            "steps": steps,
            "strength": strength,
            "guidance": guidance,
            "seeds": seeds,
            "workers": workers,
            "max_queue": max_queue,
            "timeout": timeout,
            "backend": backend,
            "max_batch": max_batch,
            "prompt": PROMPT,
            "api": api,
        },
        "engine_runs_during_load": runs,
        "requests_per_engine_run": requests_run / runs if runs else None,
        "ready_seconds": ready_s,
        "reference_seconds": reference_s,
        **summary,
        "seed_0_alone_after_load_matches": alone_after,
        "server_rss": rss,
        "server_exit_code": exit_code,
        "server_exited_cleanly": exit_code == 0,
        "records": sorted(load.records, key=lambda r: r["index"]),
    }


def table(record: dict) -> str:
    lat, st, rss = record["latency_200_seconds"], record["by_status"], record["server_rss"]

    def s(v):
        return "-" if v is None else f"{v:.3f}"

    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    rows = [
        ("model / backend", f"{record['model']} / {record['backend']} {record['precision']}"),
        ("clients, wall", f"{record['settings']['clients']}, {record['load_wall_seconds']:.1f} s"),
        (
            "requests",
            f"{record['requests']}: 200 {st['200']}, 429 {st['429']}, "
            f"504 {st['504']}, other {st['other']}",
        ),
        ("lost / corrupted", f"{record['lost']} / {record['corrupted']}"),
        ("latency p50/p95/p99 (200s)", f"{s(lat['p50'])} / {s(lat['p95'])} / {s(lat['p99'])} s"),
        ("throughput", f"{s(record['images_per_second'])} images/s"),
        ("requests per engine run", s(record.get("requests_per_engine_run"))),
        (
            "server RSS MiB ready/warm/load peak/end",
            " / ".join(
                mb(rss[k]) for k in ("start_mb", "after_warmup_mb", "peak_during_load_mb", "end_mb")
            )
            + f", flat: {rss['flat']}",
        ),
        (
            "seed 0 alone after the load",
            "same image" if record["seed_0_alone_after_load_matches"] else "DIFFERENT",
        ),
        ("SIGTERM exit code", str(record["server_exit_code"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def dumps(record: dict) -> str:
    """The record as indented JSON, with one line per request."""
    head = json.dumps({k: v for k, v in record.items() if k != "records"}, indent=2)
    rows = ",\n    ".join(json.dumps(r, separators=(",", ":")) for r in record["records"])
    return f'{head[:-2]},\n  "records": [\n    {rows}\n  ]\n}}\n'


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastimg_bench.load",
        description="Concurrent clients against `fastimg serve` on loopback, bounded in time "
        "and requests; latency, throughput, 429s, lost and corrupted responses, server RSS.",
    )
    p.add_argument("engines", help="engine folder to serve")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument(
        "--seconds", type=float, default=20.0, help="load duration (no new requests after)"
    )
    p.add_argument("--requests", type=int, default=None, help="at most this many requests in all")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=int, default=4, help="seed pool 0..K-1, one reference each")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch")
    p.add_argument("--timeout", type=float, default=300.0, help="the server's --timeout")
    p.add_argument("--backend", default="auto")
    p.add_argument("--ready-timeout", type=float, default=900.0)
    p.add_argument("--api", choices=("fastimg", "a1111"), default="fastimg",
                   help="the route called: /v1/img2img or A1111's /sdapi/v1/img2img")  # fmt: skip
    p.add_argument("-o", "--out", type=Path, required=True, help="OUT.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.clients < 1 or args.seeds < 1 or (args.requests is not None and args.requests < 1):
        parser().error("--clients, --seeds and --requests must be at least 1")
    argv = sys.argv[1:] if argv is None else argv
    record = run(
        args.engines,
        args.clients,
        args.seconds,
        args.requests,
        size=args.size,
        steps=args.steps,
        strength=args.strength,
        guidance=args.guidance,
        seeds=args.seeds,
        workers=args.workers,
        max_queue=args.max_queue,
        timeout=args.timeout,
        backend=args.backend,
        ready_timeout=args.ready_timeout,
        max_batch=args.max_batch,
        api=args.api,
    )
    record = {
        "command": "python -m fastimg_bench.load " + shlex.join(map(str, argv)),
        "machine": machine_record(),
        "versions": package_versions("fastapi", "uvicorn", "httpx"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **record,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(record))
    print(table(record))
    print(f"wrote {args.out}")
    ok = (
        record["lost"] == 0
        and record["corrupted"] == 0
        and record["seed_0_alone_after_load_matches"]
        and record["server_exit_code"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
