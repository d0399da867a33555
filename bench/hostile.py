"""`fastimg serve` beside hostile clients: the load bench's figures with idle and slow
connections held open, and the server's memory after a cost-amplification request.

    python -m fastimg_bench.hostile ENGINES --clients 2 --seconds 20 -o OUT.json

One server (as `fastimg_bench.load` starts it, on 127.0.0.1) gets, in one run:
1. the load alone (N clients for T seconds, every image checked against its seed's reference);
2. the same load beside `--idle` sockets that send nothing and `--slow` sockets that send a
   request head one header line a second (slowloris), each reopened as soon as the server
   closes it; they come from other loopback addresses (127.0.0.2 and 127.0.0.3), as an
   attacker's would, so that the per-client connection cap meets them and not the clients;
3. the load alone again (its p95 with phase 1's is the baseline, to cancel drift);
4. with the server idle: its RSS, then one cost-amplification request (a 1024 px image,
   `--amplify-images` images, 1 step at strength 1: the request of issue 25), two image bombs
   (8000 x 8000 16-bit PNG, float TIFF) and the first request again, the RSS read once it has
   settled after each.

Reported: each phase's load summary, p95 beside hostile clients over the baseline (target
<= 1.10, nothing lost), what became of the hostile sockets (opened, refused or closed by the
server), the RSS before and after phase 4 (target: back within 10 %). The exit status is 1 when
a request was lost or corrupted or the server did not exit 0.
"""

import argparse
import io
import shlex
import socket
import sys
import threading
import time
from pathlib import Path

from . import load as bench_load
from .record import machine as machine_record
from .record import versions as package_versions

IDLE_ADDRESS, SLOW_ADDRESS = "127.0.0.2", "127.0.0.3"
REOPEN_PAUSE = 0.2  # seconds between a hostile socket's end and its next
SETTLE_SECONDS = 5.0  # after phase 4's last request, before the RSS is read again
P95_TARGET, RSS_TARGET = 1.10, 0.10


class HostileSockets:
    """`count` sockets from `source` to the server, each reopened when the server ends it.

    `slow`: each sends a request head one header line a second, never finishing it; else each
    sends nothing.
    """

    def __init__(self, url: str, source: str, count: int, slow: bool):
        host, port = url.removeprefix("http://").split(":")
        self.target, self.source, self.slow = (host, int(port)), source, slow
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"opened": 0, "refused": 0, "closed_by_server": 0}
        self.open_seconds: list[float] = []
        self.threads = [
            threading.Thread(target=self._hold, daemon=True) for _ in range(max(0, count))
        ]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _hold(self) -> None:
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(self.target, timeout=5, source_address=(
                    self.source, 0))  # fmt: skip
            except OSError:
                self._count("refused")
                self.stop.wait(REOPEN_PAUSE)
                continue
            self._count("opened")
            opened = time.monotonic()
            try:
                self._keep(sock)
            finally:
                sock.close()
            if not self.stop.is_set():
                with self.lock:
                    self.counts["closed_by_server"] += 1
                    self.open_seconds.append(round(time.monotonic() - opened, 2))
                self.stop.wait(REOPEN_PAUSE)

    def _keep(self, sock: socket.socket) -> None:
        """Hold `sock` until the server ends it or the phase ends."""
        sock.settimeout(1.0)
        if self.slow:
            head = [b"POST /v1/img2img HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n"]
            head += [f"X-Slow-{k}: {k}\r\n".encode() for k in range(10_000)]
        lines = iter(head) if self.slow else None
        while not self.stop.is_set():
            try:
                if lines is not None:
                    sock.sendall(next(lines))
                if sock.recv(65536) == b"":
                    return  # the server closed it
            except TimeoutError:
                continue  # still open: nothing came within the second
            except OSError:
                return  # reset by the server

    def summary(self) -> dict:
        """What became of the sockets."""
        with self.lock:
            seconds = sorted(self.open_seconds)
        return {
            **self.counts,
            "held_at_once": len(self.threads),
            "open_seconds_median": seconds[len(seconds) // 2] if seconds else None,
            "open_seconds_max": seconds[-1] if seconds else None,
        }


def drive(server, clients: int, seconds: float, image: bytes, settings: dict,
          references: dict, timeout: float) -> dict:  # fmt: skip
    """`clients` clients for `seconds` against the server; the load bench's summary."""
    load = bench_load.Load(None, seconds, len(references))
    wall = bench_load.run_clients(load, clients, server.url, image, settings, timeout, references)
    return bench_load.summarize(load.records, wall)


def bomb_png_16bit(side: int = 8000) -> bytes:
    """A flat 16-bit grey PNG of side x side (a small file that decodes to gigabytes)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_tiff_float(side: int = 8000) -> bytes:
    """A flat float32 TIFF of side x side, deflate-compressed."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.zeros((side, side), dtype=np.float32), mode="F")
    image.save(buffer, format="TIFF", compression="tiff_adobe_deflate")
    return buffer.getvalue()


def settled_rss(server, seconds: float) -> float | None:
    """The server's RSS (MiB) after `seconds` with nothing to do: the lowest of the last 2 s."""
    time.sleep(seconds)
    values = [server.rss.sample() for _ in range(5)]
    values = [v for v in values if v is not None]
    return round(min(values), 1) if values else None


def amplification(server, images: int, side: int, timeout: float) -> dict:
    """Phase 4: RSS before and after the amplification request and the two bombs."""
    import httpx

    before = settled_rss(server, 1.0)
    sent = []
    requests = [
        (f"{side} px, {images} images x 1 step at strength 1", bench_load.test_image(side),
         "image/png", {"num_images": str(images), "steps": "1", "strength": "1"}),
        ("8000 x 8000 16-bit PNG", bomb_png_16bit(), "image/png", {}),
        ("8000 x 8000 float TIFF", bomb_tiff_float(), "image/tiff", {}),
    ]  # fmt: skip
    requests.append(requests[0])  # again: what stays after one such request, or grows
    after_each = []
    with httpx.Client() as client:
        for what, data, kind, extra in requests:
            started = time.monotonic()
            response = client.post(
                f"{server.url}/v1/img2img",
                files={"image": ("hostile", data, kind)},
                data={"prompt": bench_load.PROMPT, "seed": "0", "format": "png", **extra},
                timeout=timeout,
            )
            sent.append({
                "request": what, "upload_bytes": len(data), "status": response.status_code,
                "seconds": round(time.monotonic() - started, 2),
                "response_bytes": len(response.content),
                "refusal": None if response.status_code == 200 else response.text[:300],
            })  # fmt: skip
            after_each.append(settled_rss(server, SETTLE_SECONDS))
    peak = max((mb for _, mb in server.rss.samples), default=None)
    after = after_each[0]
    back = before is not None and after is not None and after <= before * (1 + RSS_TARGET)
    return {
        "requests": sent,
        "rss_before_mb": before,
        "rss_peak_so_far_mb": peak,
        "rss_after_mb": after,
        "rss_after_each_request_mb": after_each,
        "rss_after_over_before": None if not (before and after) else round(after / before, 3),
        "rss_back_within_10_percent": back,
    }


def run(engines: str, clients: int, seconds: float, idle: int, slow: int, size: int = 64,
        steps: int = 2, strength: float = 0.6, guidance: float = 5.0, seeds: int = 4,
        amplify_images: int = 8, amplify_size: int = 1024, timeout: float = 300.0,
        backend: str = "auto", header_timeout: float = 10.0, ready_timeout: float = 900.0,
        log=print) -> dict:  # fmt: skip
    """Start the server, run the four phases, stop it; the record."""
    import httpx

    settings = {"prompt": bench_load.PROMPT, "steps": str(steps), "strength": str(strength),
                "guidance": str(guidance)}  # fmt: skip
    image = bench_load.test_image(size)
    client_timeout = timeout + 60
    serve_args = ["--timeout", str(timeout), "--backend", backend, "--header-timeout",
                  str(header_timeout)]  # fmt: skip
    server = bench_load.Server(engines, serve_args)
    try:
        with httpx.Client() as probe:
            log(f"server pid {server.proc.pid} on {server.url}: loading {engines}")
            server.wait_ready(probe, ready_timeout)
            references = {}
            for seed in range(seeds):
                response = bench_load.post(probe, server.url, image, seed, settings,
                                           client_timeout)  # fmt: skip
                if response.status_code != 200:
                    raise RuntimeError(f"seed {seed}'s reference got {response.status_code}")
                references[seed] = bench_load.pixels(response.content)
            info = probe.get(f"{server.url}/v1/info").json()
        phases = {}
        log(f"phase 1: {clients} clients alone for {seconds:g} s")
        phases["alone_before"] = drive(server, clients, seconds, image, settings, references,
                                       client_timeout)  # fmt: skip
        log(f"phase 2: beside {idle} idle and {slow} slow connections")
        with HostileSockets(server.url, IDLE_ADDRESS, idle, slow=False) as idlers, \
                HostileSockets(server.url, SLOW_ADDRESS, slow, slow=True) as slowers:  # fmt: skip
            time.sleep(1.0)  # let them connect
            phases["beside_hostile"] = drive(server, clients, seconds, image, settings,
                                             references, client_timeout)  # fmt: skip
        hostile = {"idle": idlers.summary(), "slow": slowers.summary()}
        log("phase 3: alone again")
        phases["alone_after"] = drive(server, clients, seconds, image, settings, references,
                                      client_timeout)  # fmt: skip
        log("phase 4: RSS around a cost-amplification request and two image bombs")
        amplified = amplification(server, amplify_images, amplify_size, client_timeout)
        exit_code = server.terminate(timeout=60)
    finally:
        server.close()
    baseline = [phases[k]["latency_200_seconds"]["p95"] for k in ("alone_before", "alone_after")]
    beside = phases["beside_hostile"]["latency_200_seconds"]["p95"]
    ratio = None if None in baseline or beside is None else beside / (sum(baseline) / 2)
    lost = sum(p["lost"] for p in phases.values())
    corrupted = sum(p["corrupted"] for p in phases.values())
    return {
        "engines": str(engines),
        "model": info.get("model"),
        "backend": info.get("backend"),
        "precision": info.get("precision"),
        "settings": {
            "clients": clients,
            "seconds": seconds,
            "idle": idle,
            "slow": slow,
            "size": size,
            "steps": steps,
            "strength": strength,
            "guidance": guidance,
            "seeds": seeds,
            "amplify_images": amplify_images,
            "amplify_size": amplify_size,
            "header_timeout": header_timeout,
            "timeout": timeout,
            "backend": backend,
        },  # fmt: skip
        "phases": phases,
        "hostile_sockets": hostile,
        "p95_beside_hostile_over_alone": None if ratio is None else round(ratio, 3),
        "p95_within_10_percent": ratio is not None and ratio <= P95_TARGET,
        "lost": lost,
        "corrupted": corrupted,
        "amplification": amplified,
        "server_exit_code": exit_code,
    }


def table(record: dict) -> str:
    """The figures a reader wants, one per line."""
    rows = []
    for name, phase in record["phases"].items():
        lat = phase["latency_200_seconds"]
        rows.append((
            name, f"{phase['requests']} requests, 200: {phase['by_status']['200']}, lost "
            f"{phase['lost']}, p50/p95 {lat['p50']} / {lat['p95']} s, "
            f"{phase['images_per_second']:.2f} images/s",
        ))  # fmt: skip
    for kind, sockets in record["hostile_sockets"].items():
        rows.append((f"{kind} sockets", ", ".join(f"{k} {v}" for k, v in sockets.items())))
    rows.append(("p95 beside / alone", f"{record['p95_beside_hostile_over_alone']}"))
    amp = record["amplification"]
    for sent in amp["requests"]:
        rows.append((sent["request"], f"{sent['status']} in {sent['seconds']} s"))
    rows.append((
        "server RSS before / after",
        f"{amp['rss_before_mb']} / {amp['rss_after_mb']} MiB, after each: "
        f"{amp['rss_after_each_request_mb']} MiB "
        f"({amp['rss_after_over_before']}x; peak {amp['rss_peak_so_far_mb']})",
    ))  # fmt: skip
    rows.append(("SIGTERM exit code", str(record["server_exit_code"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parser() -> argparse.ArgumentParser:
    """The command line of `python -m fastimg_bench.hostile`."""
    p = argparse.ArgumentParser(
        prog="python -m fastimg_bench.hostile",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("engines", help="engine folder to serve")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0, help="of each load phase")
    p.add_argument("--idle", type=int, default=50, help="idle sockets held open (phase 2)")
    p.add_argument("--slow", type=int, default=5, help="slowloris sockets (phase 2)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--amplify-images", type=int, default=8, help="images of phase 4's request")
    p.add_argument("--amplify-size", type=int, default=1024, help="its image side, px")
    p.add_argument("--header-timeout", type=float, default=10.0, help="the server's")
    p.add_argument("--timeout", type=float, default=300.0, help="the server's --timeout")
    p.add_argument("--backend", default="auto")
    p.add_argument("-o", "--out", type=Path, required=True, help="OUT.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the bench, write the record, print the table; 1 when anything was lost."""
    import json

    args = parser().parse_args(argv)
    if min(args.clients, args.seeds, args.amplify_images) < 1 or min(args.idle, args.slow) < 0:
        parser().error("--clients, --seeds, --amplify-images must be >= 1, --idle/--slow >= 0")
    argv = sys.argv[1:] if argv is None else argv
    record = run(args.engines, args.clients, args.seconds, args.idle, args.slow, args.size,
                 args.steps, args.strength, args.guidance, args.seeds, args.amplify_images,
                 args.amplify_size, args.timeout, args.backend, args.header_timeout)  # fmt: skip
    record = {
        "command": "python -m fastimg_bench.hostile " + shlex.join(map(str, argv)),
        "machine": machine_record(),
        "versions": package_versions("fastapi", "uvicorn", "httpx"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **record,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))
    print(f"wrote {args.out}")
    ok = record["lost"] == 0 and record["corrupted"] == 0 and record["server_exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
