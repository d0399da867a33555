"""optimum-intel's OVStableDiffusionImg2ImgPipeline as a side of the bench.

The pipeline runs in a worker process of the peer's interpreter (optimum_intel_worker.py), on
a copy of the model its older transformers reads correctly, and on the same image, size,
sampler, seed and steps as every other side. Its OpenVINO IR and compiled blobs are cached per
model, and the blobs also per precision, shape, CPU and peer versions.

Every file the worker writes lies under the peer cache: its temp folder (TMPDIR, where
optimum-intel exports before the IR is saved) is a scratch folder there, removed when the side
finishes, and one left by a killed run is removed by the next.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from fastimg.errors import InputError, OutputError

from . import RECIPE, PeerSpec, check_interpreter

WORKER = Path(__file__).with_name("optimum_intel_worker.py")
TEXT_PREFIX = "text_model."
# Exporting a model to OpenVINO IR on first use can take minutes on a small machine.
READY_TIMEOUT = 3600.0
# A worker asked to quit removes its temp folder on the way out (gigabytes after an export).
EXIT_TIMEOUT = 300.0
# A worker told to stop (SIGTERM) is given this long to clean up before it is killed.
STOP_TIMEOUT = 30.0


def cache_root() -> Path:
    """Where peer model copies, IR and compiled blobs live ($FASTIMG_PEER_CACHE)."""
    default = Path("~/.cache/fastimg/peers").expanduser()
    return Path(os.environ.get("FASTIMG_PEER_CACHE", default))


def model_identity(model: str) -> dict:
    """What the peer's copy of `model` depends on: its files' names, sizes and times."""
    path = Path(model)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {
            "folder": str(path.resolve()),
            "files": [[str(p.relative_to(path)), *_stamp(p)] for p in files],
        }
    if path.is_file():
        return {"file": str(path.resolve()), "stamp": _stamp(path)}
    return {"hub": model}


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def prefix_text_encoder_keys(folder: Path) -> bool:
    """Give the text encoder's weights the `text_model.` prefix older transformers expect
    (5.5 silently re-initialises a CLIPTextModel saved without it); True if it changed."""
    from safetensors.torch import load_file, save_file

    weights = folder / "text_encoder" / "model.safetensors"
    if not weights.is_file():
        return False
    tensors = load_file(weights)
    if all(key.startswith(TEXT_PREFIX) for key in tensors):
        return False
    fixed = {k if k.startswith(TEXT_PREFIX) else TEXT_PREFIX + k: v for k, v in tensors.items()}
    save_file(fixed, weights, metadata={"format": "pt"})
    return True


def prepare_model(model: str, root: Path, log=print) -> Path:
    """A diffusers folder of `model` the peer's versions read correctly (made once, cached)."""
    from fastimg.engine_folder.compiled_cache import cache_key

    name = Path(model.rstrip("/")).name.removesuffix(".safetensors").replace("/", "-")
    folder = root / f"{name}-{cache_key(model_identity(model))}"
    copy = folder / "model"
    if (copy / "model_index.json").is_file():
        return folder
    from fastimg_export.loading import load_pipeline

    log(f"writing a copy of {model} for the peer in {copy}")
    staging = folder / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pipe = load_pipeline(model)
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        prefix_text_encoder_keys(staging)
        os.replace(staging, copy)
    except Exception as exc:  # safetensors reports a full disk as its own error type
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(
            f"could not write the peer's copy of {model} in {folder}: {exc}. Free some space "
            "there, or point FASTIMG_PEER_CACHE at a disk with room"
        ) from None
    return folder


def scratch_folder(root: Path) -> Path:
    """A new scratch folder of this process under `root`/scratch (the harness' input image
    and the worker's temp folder), after removing those left by processes that have ended."""
    parent = root / "scratch"
    parent.mkdir(parents=True, exist_ok=True)
    for left in parent.iterdir():
        owner = left.name.partition("-")[0]
        if not owner.isdigit() or not _alive(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    (folder / "tmp").mkdir()
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def blob_cache(folder: Path, spec: PeerSpec, versions: dict, static: bool, job) -> Path:
    """The OpenVINO CACHE_DIR of one precision, shape, CPU and set of peer versions."""
    from fastimg.engine_folder.compiled_cache import cache_key
    from fastimg.machine import cpu_identity

    parts = {
        "precision": spec.precision,
        "shape": [job.size, job.batch] if static else "dynamic",
        "cpu": cpu_identity(),
        "versions": versions,
    }
    return folder / "ov_cache" / cache_key(parts)


class Worker:
    """One worker process of the peer's interpreter, answering one JSON line per request."""

    def __init__(self, python: str, spec: dict, temp: Path, log=print):
        self._stderr = deque(maxlen=40)
        self.process = subprocess.Popen(
            [python, str(WORKER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env={**os.environ, "TMPDIR": str(temp), "FASTIMG_PEER_TEMP": str(temp)},
        )
        self._log = log
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.rstrip())
            if line.startswith("[optimum-intel]"):
                self._log(line.rstrip())

    def reply(self, timeout: float | None = None) -> dict:
        """The worker's next reply; a RuntimeError with its last words if it has none."""
        line = _read_line(self.process.stdout, timeout)
        if not line:
            self.process.wait(timeout=10)
            raise RuntimeError(
                f"the peer worker ended (exit code {self.process.returncode}):\n"
                + "\n".join(self._stderr)
            )
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the peer worker failed: {answer['error']}")
        return answer

    def ask(self, request: dict, timeout: float | None = None) -> dict:
        """Send one request and return its reply."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.reply(timeout)

    def close(self) -> dict:
        """Ask the worker to quit and wait while it cleans up; what it reports on the way out
        (its peak memory)."""
        if self.process.poll() is not None:
            return {}
        try:
            reply = self.ask({"quit": True}, timeout=60)
            self.process.wait(timeout=EXIT_TIMEOUT)
            return reply
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired):
            return {}
        finally:
            self.stop()

    def stop(self) -> None:
        """End the worker now: SIGTERM (it cleans up on the way out), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def _read_line(stream, timeout: float | None) -> str:
    if timeout is None:
        return stream.readline()
    box = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise RuntimeError(f"the peer worker did not answer within {timeout:.0f} s")
    return box[0]


class OptimumIntelSide:
    """optimum-intel's img2img pipeline on OpenVINO, static shapes (its fastest form)."""

    static = True

    def __init__(self, spec: PeerSpec, model: str, job, log=print):
        if job.vae is not None:
            raise InputError("a peer runs the model's own VAE: leave out --vae, or the --peer")
        self.peer, self.job, self.device, self._log = spec, job, "cpu", log
        self.versions = check_interpreter(spec)
        root = cache_root()
        self.folder = prepare_model(model, root, log=log)
        self.cache = blob_cache(self.folder, spec, self.versions, self.static, job)
        self._scratch = scratch_folder(root)
        self.image_path = self._scratch / "input.png"
        try:
            job.load_image().save(self.image_path)
            self.worker = self.start(self.cache)
            ready = self.worker.reply(timeout=READY_TIMEOUT)
        except RuntimeError as exc:
            self.finish()
            raise InputError(
                f"{spec.name} could not load {model} in {spec.python}: {exc}. Check its "
                f"environment against {RECIPE}"
            ) from None
        except BaseException:  # interrupted while the worker exports or compiles
            self.finish()
            raise
        self.precision = ready["precision"]
        default = " (its default)" if spec.precision == "default" else ""
        self.name = f"{spec.name} {self.precision}{default}"
        self.spec = spec.label

    def worker_spec(self, cache: Path | None) -> dict:
        """What the worker loads: the IR, the shapes, the precision, the scheduler."""
        from fastimg.engine_folder.compiled_cache import cache_key
        from fastimg_export.loading import diffusers_scheduler

        with open(self.folder / "model" / "scheduler" / "scheduler_config.json") as f:
            config = json.load(f)
        scheduler = diffusers_scheduler(config, self.job.sampler)
        return {
            "model": str(self.folder / "model"),
            "ir": str(self.folder / f"ir-{cache_key(self.versions)}"),
            "size": self.job.size,
            "batch": self.job.batch,
            "precision": self.peer.precision,
            "static": self.static,
            "cfg": self.job.guidance > 1,  # as diffusers' do_classifier_free_guidance
            "scheduler": {"class": type(scheduler).__name__, "config": dict(scheduler.config)},
            "cache_dir": None if cache is None else str(cache),
        }

    def start(self, cache: Path | None) -> Worker:
        """A fresh worker process (its compiled blobs in `cache`, or none cached)."""
        return Worker(self.peer.python, self.worker_spec(cache), self._scratch / "tmp", self._log)

    def request(self, out: Path) -> dict:
        """The job as the worker takes it, its first image written to `out`."""
        job = self.job
        return {
            "run": {
                "prompt": job.prompt,
                "image": str(self.image_path),
                "strength": job.strength,
                "steps": job.steps,
                "guidance": job.guidance,
                "seed": job.seed,
                "batch": job.batch,
                "out": str(out),
            }
        }

    def once(self):
        """One image, and the per-stage seconds of making it (timed inside the worker)."""
        from PIL import Image

        out = self._scratch / "out.png"
        reply = self.worker.ask(self.request(out))
        with Image.open(out) as image:
            image.load()
            return image.copy(), reply["seconds"], reply["stages"]

    def close(self) -> dict:
        """End the worker; its peak memory."""
        worker = getattr(self, "worker", None)
        return {} if worker is None else worker.close()

    def stop(self) -> None:
        """End the worker now, without waiting for what it is doing (the run was interrupted)."""
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()

    def cold_start(self, cached: bool) -> dict:
        """A fresh worker to its first image, with the compiled blobs cached or not at all."""
        spawned = time.time()
        worker = self.start(self.cache if cached else None)
        try:
            ready = worker.reply(timeout=READY_TIMEOUT)
            first = worker.ask(self.request(self._scratch / "cold.png"))
        except BaseException:
            worker.stop()
            raise
        peak = worker.close()
        return {
            "seconds": first["done"] - spawned,
            "interpreter_to_main_seconds": ready["started"] - spawned,
            "load_seconds": ready["loaded"] - ready["started"],
            "first_image_seconds": first["done"] - ready["loaded"],
            "peak_rss_mb": peak.get("peak_rss_mb"),
            "compiled_cache": "warm" if cached else "none",
        }

    def finish(self) -> None:
        """Stop the worker if it still runs and remove the side's scratch files (after its
        cold starts)."""
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)


SIDES = {"optimum-intel": OptimumIntelSide}
