"""`fastimg serve`: its options, what it refuses before starting, and a graceful SIGTERM."""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from fastimg.cli.serve import serve

SERVE_MODULES = ("fastapi", "starlette", "uvicorn", "python_multipart", "prometheus_client")


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_the_options(runner):
    result = runner.invoke(serve, ["--help"])
    assert result.exit_code == 0
    for option in ("ENGINES", "--host", "--port", "--workers", "--max-queue", "--timeout",
                   "--max-upload-mb", "--max-pixels", "--api-key", "FASTIMG_API_KEY", "--cors",
                   "--backend", "--precision", "--device", "--shapes"):  # fmt: skip
        assert option in result.output
    assert "--engines" not in result.output  # ENGINES is the argument
    assert "/sdapi/v1" in result.output and "base_url" in result.output  # (issue 30's clients)


def test_the_cli_imports_nothing_of_the_server():
    code = (
        "import sys, fastimg.cli.main, fastimg.cli.serve\n"
        f"loaded = [m for m in {SERVE_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_binding_beyond_loopback_needs_an_api_key(runner, tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    monkeypatch.delenv("FASTIMG_API_KEY", raising=False)
    missing = tmp_path / "no-engines"
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        result = runner.invoke(serve, [str(missing), "--host", host])
        assert result.exit_code == 2
        assert f"--host {host} serves other machines too: pass --api-key" in result.output
    empty = runner.invoke(serve, [str(missing), "--host", "0.0.0.0", "--api-key", ""])
    assert empty.exit_code == 2
    # with the key from the environment it goes on, to refuse the folder (no server starts)
    keyed = runner.invoke(serve, [str(missing), "--host", "0.0.0.0"],
                          env={"FASTIMG_API_KEY": "s3cret"})  # fmt: skip
    assert keyed.exit_code == 1 and "serves other machines" not in keyed.output
    assert str(missing) in keyed.output


@pytest.mark.parametrize("key", [" s3cret", "s3cret\n", "clé", "ключ", "two words"])
def test_a_key_no_client_could_send_is_refused_at_start(runner, tmp_path, monkeypatch, key):
    pytest.importorskip("fastapi")
    monkeypatch.delenv("FASTIMG_API_KEY", raising=False)
    result = runner.invoke(serve, [str(tmp_path / "no-engines"), "--api-key", key])
    assert result.exit_code == 2 and "printable ASCII without spaces" in result.output
    from_env = runner.invoke(serve, [str(tmp_path / "no-engines")], env={"FASTIMG_API_KEY": key})
    assert from_env.exit_code == 2 and "FASTIMG_API_KEY" in from_env.output


def test_the_server_takes_no_client_address_from_forwarded_headers(monkeypatch):
    pytest.importorskip("uvicorn")
    import uvicorn

    from fastimg.serve import server
    from fastimg.serve.service import ServeOptions

    made = {}
    monkeypatch.setattr(uvicorn, "Config", lambda app, **options: made.update(options) or 1 / 0)
    with pytest.raises(ZeroDivisionError):  # (stopped before a socket opens)
        server.run_server(ServeOptions(), "127.0.0.1", 8000, load=lambda: None)
    assert made["proxy_headers"] is False


def test_without_the_serve_extra_the_command_names_it(runner, monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "fastimg.serve" or m.startswith("fastimg.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    result = runner.invoke(serve, [str(tmp_path)])
    assert result.exit_code == 1
    assert "fastapi is not installed: install it with  pip install 'fastimg[serve]'" in (
        result.output
    )


# --- a real process ----------------------------------------------------------------------------

# The server, with each engine run held until the test writes to the FIFO argv[1].
HELD_SERVER = """
import sys
from fastimg.cli.serve import serve
from fastimg.diffusion.pipeline import Img2ImgPipeline

release, run = sys.argv[1], Img2ImgPipeline.__call__

def held(self, *args, **kwargs):
    print("fastimg-test: running", flush=True)
    with open(release, "rb") as fifo:  # until the test opens it and writes
        fifo.read(1)
    return run(self, *args, **kwargs)

Img2ImgPipeline.__call__ = held
serve(sys.argv[2:], prog_name="fastimg serve")
"""


class Output:
    """The lines a process prints, read in a thread so that waiting for one can time out."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 60.0) -> re.Match:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(end - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line matched {pattern!r}; got {self.seen}") from None
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny, tmp_path, photo):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    release = tmp_path / "release"
    os.mkfifo(release)
    picture = tmp_path / "in.png"
    photo.save(picture)
    command = [sys.executable, "-c", HELD_SERVER, str(release), str(tiny[1]), "--port", "0",
               "--backend", "onnxruntime", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FASTIMG_API_KEY", None)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        output = Output(process.stdout)
        port = output.expect(r"Uvicorn running on http://127\.0\.0\.1:(\d+)").group(1)
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while httpx.get(f"{url}/v1/health").status_code != 200:  # the engines load
            assert time.monotonic() < end and process.poll() is None, output.seen
            time.sleep(0.05)
        answer = {}

        def transform():
            answer["response"] = httpx.post(
                f"{url}/v1/img2img",
                files={"image": ("in.png", picture.read_bytes(), "image/png")},
                data={"prompt": "a cat", "strength": "0.5", "steps": "2", "seed": "3"},
                timeout=60,
            )

        client = threading.Thread(target=transform)
        client.start()
        output.expect("fastimg-test: running")
        process.send_signal(signal.SIGTERM)
        output.expect("Waiting for connections to close")  # stopped accepting; one in flight
        with open(release, "wb") as fifo:
            fifo.write(b"g")
        client.join(60)
        response = answer["response"]
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG")
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- on Ray ------------------------------------------------------------------------------------


def test_ray_options_without_ray_are_refused(runner, tiny):
    for extra in (["--replicas", "2"], ["--replica-cpus", "1"], ["--ray-address", "x:6379"]):
        result = runner.invoke(serve, [str(tiny[1]), *extra])
        assert result.exit_code == 2 and "go with --ray" in result.output


def test_ray_without_the_ray_extra_names_it(runner, monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = runner.invoke(serve, [str(tiny[1]), "--ray"])
    assert result.exit_code == 1
    assert "ray is not installed: install it with  pip install 'fastimg[ray]'" in result.output


def test_serve_on_ray_as_typed_serves_and_stops_on_sigterm(tiny, tmp_path, photo):
    pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    picture = tmp_path / "in.png"
    photo.save(picture)
    command = ["fastimg", "serve", str(tiny[1]), "--ray", "--replicas", "1",
               "--replica-cpus", "1", "--port", str(port), "--backend", "onnxruntime",
               "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("FASTIMG_API_KEY", "RAY_ADDRESS"):
        env.pop(name, None)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        output = Output(process.stdout)
        output.expect(r"serving on http://127\.0\.0\.1:\d+ \(Ray Serve\)", timeout=240)
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/health").json() == {"status": "ready"}
        response = httpx.post(
            f"{url}/v1/img2img",
            files={"image": ("in.png", picture.read_bytes(), "image/png")},
            data={"prompt": "a cat", "strength": "0.5", "steps": "2", "seed": "3"},
            timeout=120,
        )
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0, output.seen
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_replicas_the_cluster_cannot_hold_are_refused_before_deploying(runner, tiny, ray_cluster):
    pytest.importorskip("ray.serve")
    # the README's cluster example on this 2-CPU local cluster: 2 x 8 CPUs would wait forever
    result = runner.invoke(serve, [str(tiny[1]), "--ray", "--replicas", "2", "--replica-cpus", "8"])
    assert result.exit_code == 1
    assert "need 16 CPUs, but the Ray cluster has 2" in result.output
    assert "lower --replicas or --replica-cpus" in result.output


def test_serve_loads_and_verifies_the_manifest_once(runner, tiny, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("prometheus_client")
    import fastimg.serve
    from fastimg.engine_folder import manifest as manifest_module
    from fastimg.serve.app import Service

    verified, loaded = [], []
    original = manifest_module.verify_files
    monkeypatch.setattr(
        manifest_module, "verify_files", lambda *a, **k: verified.append(a[0]) or original(*a, **k)
    )
    monkeypatch.setattr(
        fastimg.serve,
        "run_server",
        lambda options, host, port: loaded.append(Service(options)._load_engines()),
    )
    result = runner.invoke(serve, [str(tiny[1]), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert loaded[0].manifest.folder == tiny[1] and verified == [tiny[1]]


@pytest.mark.parametrize(("given", "asked"), [([], "dynamic"), (["--shapes", "auto"], "auto")])
def test_serve_runs_dynamic_shapes_unless_asked(runner, tiny, monkeypatch, given, asked):
    # Requests come in every size and are batched together: a compile per size would not pay.
    pytest.importorskip("fastapi")
    import fastimg.serve

    served = []
    monkeypatch.setattr(fastimg.serve, "run_server", lambda options, *_: served.append(options))
    result = runner.invoke(serve, [str(tiny[1]), "--backend", "openvino", *given])
    assert result.exit_code == 0, result.output
    assert served[0].shapes == asked
