"""Peers in the bench: the --peer form, the refusals of a missing or broken interpreter, the
model copy for older transformers, and a whole run against a stand-in optimum-intel."""

import getpass
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastimg.cli import cli
from fastimg.errors import InputError

pytest.importorskip("diffusers")

from fastimg_bench import harness, report  # noqa: E402
from fastimg_bench.job import BenchJob  # noqa: E402
from fastimg_bench.peers import PeerSpec, check_interpreter, parse_peer  # noqa: E402
from fastimg_bench.peers.optimum_intel import (  # noqa: E402
    prefix_text_encoder_keys,
    scratch_folder,
)

STAND_IN = Path(__file__).with_name("stand_in_peer")


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def stand_in_python(tmp_path):
    """An 'interpreter' that is this one with the stand-in optimum-intel importable."""
    return executable(
        tmp_path / "peer-python",
        f'#!/bin/sh\nPYTHONPATH="{STAND_IN}" exec "{sys.executable}" "$@"\n',
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("optimum-intel=/v/bin/python", PeerSpec("optimum-intel", "default", "/v/bin/python")),
        ("optimum-intel:fp32=/v/bin/python", PeerSpec("optimum-intel", "fp32", "/v/bin/python")),
        ("optimum-intel:bf16= py ", PeerSpec("optimum-intel", "bf16", "py")),
    ],
)
def test_peer_specs(text, expected):
    assert parse_peer(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("optimum-intel", "names no interpreter"),
        ("optimum-intel=", "names no interpreter"),
        ("tensorrt-demo=/bin/python", "no peer called 'tensorrt-demo'"),
        ("optimum-intel:int4=/bin/python", "precision 'int4' is not one of"),
    ],
)
def test_bad_peer_specs_say_the_form(text, message):
    with pytest.raises(InputError, match=message):
        parse_peer(text)


def test_a_missing_or_broken_interpreter_is_refused_with_the_recipe(tmp_path):
    cases = {
        "does not exist": tmp_path / "nothing" / "python",
        "is not an executable": tmp_path,
        "cannot import its packages (ModuleNotFoundError": Path(sys.executable),
    }
    not_executable = tmp_path / "python-text"
    not_executable.write_text("#!/bin/sh\n")
    cases["is not an executable "] = not_executable
    crashes = executable(
        tmp_path / "crashes", "#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n"
    )
    cases["cannot import its packages (Segmentation fault)"] = crashes
    chatty = executable(tmp_path / "chatty", "#!/bin/sh\necho hello\n")
    cases["answered the version probe with 'hello'"] = chatty
    for message, python in cases.items():
        with pytest.raises(InputError) as caught:
            check_interpreter(PeerSpec("optimum-intel", "default", str(python)))
        assert message.strip() in str(caught.value) and "bench/peers/README.md" in str(caught.value)


def test_the_stand_in_interpreter_passes_the_probe(stand_in_python):
    versions = check_interpreter(PeerSpec("optimum-intel", "default", str(stand_in_python)))
    assert versions["optimum-intel"] == "0.0.0" and "diffusers" in versions


def test_the_cli_refuses_a_broken_peer_before_loading_anything(tiny, tmp_path):
    model, engines = tiny
    args = ["bench", "--model", str(model), "--engines", str(engines), "--size", "64"]
    args += ["--no-cold-start", "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(cli, [*args, "--peer", f"optimum-intel={tmp_path / 'none'}"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert "loading diffusers" not in result.output and not (tmp_path / "r.json").exists()
    taesd = ["--vae", str(tmp_path), "--peer", f"optimum-intel={sys.executable}"]
    result = CliRunner().invoke(cli, [*args, *taesd])
    assert result.exit_code == 1 and "the model's own VAE" in result.output


def test_the_text_encoder_copy_carries_the_prefix_older_transformers_expect(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file

    model, _ = tiny
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    before = load_file(copy / "text_encoder" / "model.safetensors")
    assert prefix_text_encoder_keys(copy)
    after = load_file(copy / "text_encoder" / "model.safetensors")

    def prefixed(key):
        return key if key.startswith("text_model.") else "text_model." + key

    assert sorted(after) == sorted(map(prefixed, before))
    assert all((after[prefixed(key)] == value).all() for key, value in before.items())
    assert not prefix_text_encoder_keys(copy)  # once is enough


@pytest.fixture(scope="module")
def peer_record(tiny, tmp_path_factory):
    """A bench run of ONNX Runtime against the stand-in peer at its default and in fp32."""
    model, engines = tiny
    folder = tmp_path_factory.mktemp("peer")
    python = executable(
        folder / "peer-python",
        f'#!/bin/sh\nPYTHONPATH="{STAND_IN}" exec "{sys.executable}" "$@"\n',
    )
    calls = folder / "calls.jsonl"
    temp = folder / "system-temp"  # the run's temp folder, watched for what it leaves there
    temp.mkdir()
    os.environ["FASTIMG_PEER_CACHE"] = str(folder / "cache")
    os.environ["STAND_IN_PEER_LOG"] = str(calls)
    os.environ["TMPDIR"], tempfile.tempdir = str(temp), str(temp)
    try:
        peers = [parse_peer(f"optimum-intel={python}"), parse_peer(f"optimum-intel:fp32={python}")]
        job = BenchJob(size=64, steps=4, strength=0.5, guidance=0.0)
        record = harness.run(
            str(model), str(engines), job, ["onnxruntime:fp32"], warmup=1, repeats=2,
            log=lambda m: 0, peers=peers,
        )  # fmt: skip
    finally:
        del os.environ["FASTIMG_PEER_CACHE"], os.environ["STAND_IN_PEER_LOG"]
        del os.environ["TMPDIR"]
        tempfile.tempdir = None
    return record, [json.loads(line) for line in calls.read_text().splitlines()], folder


def test_a_peer_is_a_side_compared_with_diffusers_and_with_fastimg(peer_record):
    record, calls, _ = peer_record
    sides = record["sides"]
    peer, peer_fp32 = sides["optimum-intel fp32 (its default)"], sides["optimum-intel fp32"]
    ours = sides["fastimg onnxruntime fp32"]
    # The peer is handed the job every side runs: image size, settings, seed and sampler.
    runs = [c["call"] for c in calls if "call" in c]
    assert len(runs) == 2 * (1 + 2 + 2)  # two peers: a warm-up, 2 repeats, 2 cold starts each
    job = record["job"]
    for run in runs:
        assert run["image_size"] == [job["size"], job["size"]] and run["seed"] == job["seed"]
        assert (run["num_inference_steps"], run["strength"], run["guidance_scale"]) == (
            job["steps"], job["strength"], job["guidance"]
        )  # fmt: skip
        assert run["scheduler"] == "DDIMScheduler"  # the job's ddim
    for side in (peer, peer_fp32):
        assert len(side["seconds"]) == 2 and side["baseline"] == "diffusers"
        assert "psnr_db" in side["vs_diffusers"]  # measured like every side's
        assert side["speedup_vs_diffusers"] == pytest.approx(
            sides["diffusers"]["median_seconds"] / side["median_seconds"]
        )
        assert side["stages_median_seconds"]["unet"] > 0  # timed inside the worker
        assert side["unet_call_median_seconds"] > 0
        assert side["peak_rss_mb"] > 0
    assert ours["speedup_vs_peers"]["optimum-intel fp32"] == pytest.approx(
        peer_fp32["median_seconds"] / ours["median_seconds"]
    )
    assert record["peers"]["optimum-intel fp32"]["optimum-intel"] == "0.0.0"
    assert "fastimg onnxruntime fp32 is" in report.table(record)


def test_the_peer_runs_static_shapes_without_a_guidance_half_and_caches_per_precision(
    peer_record,
):
    record, calls, folder = peer_record
    shapes = [c["unet_shapes"] for c in calls if "unet_shapes" in c]
    assert shapes and all(s["sample"][0] == 1 for s in shapes[1::2])  # guidance 0: batch 1
    configs = [c["ov_config"] for c in calls if "ov_config" in c and not c["export"]]
    assert {c.get("INFERENCE_PRECISION_HINT") for c in configs} == {None, "f32"}
    warm = {c["CACHE_DIR"] for c in configs if "CACHE_DIR" in c}
    assert len(warm) == 2  # one compiled cache per precision
    assert sum(1 for c in calls if c.get("export")) == 1  # the IR is exported once
    for name in ("optimum-intel fp32 (its default)", "optimum-intel fp32"):
        side = record["sides"][name]
        assert side["cold_start"]["compiled_cache"] == "warm"
        assert side["cold_start_uncached"]["compiled_cache"] == "none"
        assert side["cold_start"]["seconds"] >= side["cold_start"]["first_image_seconds"] > 0
    assert not list(folder.glob("cache/*/model.partial"))  # the copy was completed


def test_a_peer_that_fails_to_load_is_an_error_naming_the_interpreter(tiny, tmp_path):
    model, engines = tiny
    python = executable(
        tmp_path / "peer-python",
        f'#!/bin/sh\nSTAND_IN_FAIL=1 PYTHONPATH="{STAND_IN}" exec "{sys.executable}" "$@"\n',
    )
    (tmp_path / "cache").mkdir()
    os.environ["FASTIMG_PEER_CACHE"] = str(tmp_path / "cache")
    try:
        with pytest.raises(InputError, match="could not load") as caught:
            harness.run(
                str(model), str(engines), BenchJob(size=64), [], warmup=0, repeats=1,
                cold_start=False, log=lambda m: 0, peers=[parse_peer(f"optimum-intel={python}")],
            )  # fmt: skip
    finally:
        del os.environ["FASTIMG_PEER_CACHE"]
    assert str(python) in str(caught.value) and "stand-in refuses" in str(caught.value)


def test_no_peer_process_outlives_the_run(peer_record):
    import time

    _, _, folder = peer_record

    def left() -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(folder) in command:
                found.append(f"{proc.name}: {command[:120]}")
        return found

    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []


def test_a_run_leaves_nothing_in_the_temp_folder_or_the_scratch(peer_record):
    _, calls, folder = peer_record
    exports = [c["export_folder"] for c in calls if "export_folder" in c]
    assert len(exports) == 1  # optimum-intel's export went to a temporary folder ...
    assert Path(exports[0]).is_relative_to(folder / "cache" / "scratch")  # ... in the cache
    assert left_in(folder / "system-temp") == []
    assert list((folder / "cache" / "scratch").iterdir()) == []


def left_in(temp: Path) -> list[str]:
    """What a run left in its temp folder, less the fixed-name files other libraries reuse from
    run to run (onnxruntime's 51-byte `.ses` stamp, torch's `torchinductor_USER` cache)."""
    reused = {".ses", f"torchinductor_{getpass.getuser()}"}
    return sorted(entry.name for entry in temp.iterdir() if entry.name not in reused)


# (Ctrl-C's handler set as in a terminal: a test run started in the background by a
# non-interactive shell inherits SIGINT ignored, and the interrupted run would not see it.)
HARNESS = """
import signal
import sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from fastimg_bench import harness
from fastimg_bench.job import BenchJob
from fastimg_bench.peers import parse_peer
harness.run(sys.argv[1], sys.argv[2], BenchJob(size=64, steps=2), [], warmup=0, repeats=1,
            cold_start=False, log=print, peers=[parse_peer("optimum-intel=" + sys.argv[3])])
"""


@pytest.fixture
def exporting_run(tiny, tmp_path, stand_in_python):
    """A bench run in its own process group, returned while its peer worker is exporting
    (the stand-in waits there): (the run, the worker's pid, its export folder, tmp_path)."""
    model, engines = tiny
    (tmp_path / "system-temp").mkdir()
    calls = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "system-temp"),
        "FASTIMG_PEER_CACHE": str(tmp_path / "cache"),
        "STAND_IN_PEER_LOG": str(calls),
        "STAND_IN_EXPORT_SECONDS": "120",
    }
    run = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(model), str(engines), str(stand_in_python)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        exports = [json.loads(line) for line in calls.read_text().splitlines()] if (
            calls.is_file()) else []  # fmt: skip
        exports = [e for e in exports if "export_folder" in e]
        if exports:
            yield run, exports[0]["pid"], Path(exports[0]["export_folder"]), tmp_path
            break
        time.sleep(0.2)
    else:
        run.kill()
        pytest.fail(f"the worker never started exporting: {run.communicate()}")
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def _ended(pid: int, within: float = 60) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_an_interrupted_run_leaves_nothing_behind(exporting_run):
    run, worker, export, folder = exporting_run
    assert export.is_dir()
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the harness and its worker both get it
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0 and "KeyboardInterrupt" in err
    assert _ended(worker)
    assert left_in(folder / "system-temp") == []
    assert list((folder / "cache" / "scratch").iterdir()) == []


def test_a_killed_worker_leaves_nothing_behind(exporting_run):
    run, worker, export, folder = exporting_run
    os.kill(worker, signal.SIGKILL)  # its export folder is left where it was ...
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1 and "could not load" in err
    assert not export.exists()  # ... and removed with the harness' scratch
    assert left_in(folder / "system-temp") == []
    assert list((folder / "cache" / "scratch").iterdir()) == []


def test_a_killed_run_ends_its_worker_and_the_next_run_sweeps_its_scratch(exporting_run):
    run, worker, export, folder = exporting_run
    os.kill(run.pid, signal.SIGKILL)  # the harness alone: its worker sees its parent end
    run.wait()
    assert _ended(worker)
    assert not export.exists()  # the worker emptied its temp folder on the way out
    assert left_in(folder / "system-temp") == []
    left = list((folder / "cache" / "scratch").iterdir())
    assert len(left) == 1  # the killed harness' own scratch (its input image) ...
    fresh = scratch_folder(folder / "cache")
    assert list((folder / "cache" / "scratch").iterdir()) == [fresh]  # ... swept by the next
