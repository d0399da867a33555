"""fastimg's nodes in a real ComfyUI, run headless on the CPU: the example workflow queued
through ComfyUI's HTTP API gives `fastimg transform`'s image pixel for pixel, and a bad engine
folder, an unknown sampler or a mask of another size is a node error with fastimg's one line.

ComfyUI's source is not on PyPI, so CI cannot install it: these tests run where
FASTIMG_COMFYUI_DIR names a ComfyUI checkout (the folder with main.py) and
FASTIMG_COMFYUI_PYTHON a Python with its requirements (default: this one);
bench/results/comfyui-*.md records a run.
"""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastimg.comfyui.install import API_WORKFLOW, HERE, WORKFLOW
from fastimg.comfyui.tensors import to_pil_masks
from fastimg.engine_folder.manifest import load_manifest
from fastimg.errors import FastImgError
from fastimg.settings import SETTINGS

httpx = pytest.importorskip("httpx")

COMFYUI_DIR = os.environ.get("FASTIMG_COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("FASTIMG_COMFYUI_PYTHON", sys.executable)
SRC = Path(__file__).parents[2] / "src"
START_TIMEOUT_S = 600
RUN_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR,
        reason="no ComfyUI here (it is not on PyPI): set FASTIMG_COMFYUI_DIR to a ComfyUI "
        "checkout and FASTIMG_COMFYUI_PYTHON to a Python with its requirements",
    ),
]
SETTINGS_FOR = {"strength": 0.7, "steps": 6, "guidance": 6.0, "sampler": "euler", "seed": 1234}
PROMPT = "a lighthouse on a cliff, oil painting"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny):
    """(ComfyUI's URL, its base folder) of a ComfyUI with fastimg's nodes installed by
    `python -m fastimg comfyui install`, stopped after the module's tests."""
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    installed = subprocess.run(
        [sys.executable, "-m", "fastimg", "comfyui", "install", str(base),
         "--engines", str(tiny[1])],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    port = _free_port()
    log = open(base / "comfyui.log", "w")  # closed once the server stops
    server = subprocess.Popen(
        [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:"],
        cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert server.poll() is None, (base / "comfyui.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (base / "comfyui.log").read_text()[-4000:]
            try:
                if httpx.get(f"{url}/object_info/FastimgImg2Img", timeout=5).json():
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        yield url, base
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _upload(url: str, picture: Image.Image, name: str) -> str:
    data = io.BytesIO()
    picture.save(data, format="PNG")
    answer = httpx.post(
        f"{url}/upload/image",
        files={"image": (name, data.getvalue(), "image/png")},
        data={"overwrite": "true"},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["name"]


def _workflow(engines: Path, image: str, **changes) -> dict:
    """The example workflow the package ships, on `engines` and `image`, with `changes`."""
    workflow = json.loads((HERE / API_WORKFLOW).read_text())
    workflow["1"]["inputs"]["image"] = image
    workflow["2"]["inputs"].update(
        engines_folder=str(engines), backend="onnxruntime", precision="fp32"
    )
    workflow["3"]["inputs"].update(prompt=PROMPT, **SETTINGS_FOR)
    for node, inputs in changes.items():
        workflow[node]["inputs"].update(inputs)
    return workflow


def _queue(url: str, workflow: dict):
    return httpx.post(f"{url}/prompt", json={"prompt": workflow, "client_id": "fastimg-tests"})


def _finished(url: str, prompt_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        history = httpx.get(f"{url}/history/{prompt_id}").json()
        entry = history.get(prompt_id)
        if entry and (entry["status"]["completed"] or entry["status"]["status_str"] == "error"):
            return entry
        time.sleep(0.5)
    raise AssertionError(f"ComfyUI did not finish {prompt_id} within {RUN_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_the_example_workflow_gives_fastimg_transforms_image_with_its_labels(
    comfy, tiny, picture, tmp_path
):
    url, _ = comfy
    name = _upload(url, picture, "parity.png")
    workflow = _workflow(tiny[1], name)
    queued = _queue(url, workflow)
    assert queued.status_code == 200, queued.text
    entry = _finished(url, queued.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = entry["outputs"]["4"]["images"]
    viewed = httpx.get(f"{url}/view", params=saved)
    assert viewed.status_code == 200
    from_comfy = Image.open(io.BytesIO(viewed.content))

    picture.save(tmp_path / "in.png")
    transform = subprocess.run(
        [sys.executable, "-m", "fastimg", "transform", str(tmp_path / "in.png"),
         "--engines", str(tiny[1]), "--backend", "onnxruntime", "--precision", "fp32",
         "--prompt", PROMPT, "--strength", "0.7", "--steps", "6", "--guidance", "6",
         "--scheduler", "euler", "--seed", "1234", "-o", str(tmp_path / "out.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert transform.returncode == 0, transform.stderr
    from_cli = Image.open(tmp_path / "out.png")
    assert from_comfy.size == from_cli.size == picture.size
    assert np.array_equal(np.asarray(from_comfy.convert("RGB")), np.asarray(from_cli))
    # fastimg's labels, as the CLI writes them, and ComfyUI's own workflow metadata
    assert from_comfy.info["parameters"] == from_cli.info["parameters"]
    assert "Seed: 1234" in from_comfy.info["parameters"]
    assert "XML:com.adobe.xmp" in from_comfy.info
    assert from_comfy.info["fastimg:seed"] == from_cli.info["fastimg:seed"]
    written = json.loads(from_comfy.info["prompt"])  # ComfyUI adds its is_changed keys
    assert {node: written[node]["inputs"] for node in written} == {
        node: workflow[node]["inputs"] for node in workflow
    }


def test_an_engine_folder_from_another_node_loads_when_the_run_comes(comfy, tiny, picture):
    url, _ = comfy
    workflow = _workflow(tiny[1], _upload(url, picture, "f.png"))
    workflow["6"] = {"class_type": "PrimitiveString", "inputs": {"value": str(tiny[1])}}
    workflow["2"]["inputs"]["engines_folder"] = ["6", 0]
    queued = _queue(url, workflow)
    assert queued.status_code == 200, queued.text
    entry = _finished(url, queued.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["4"]["images"]) == 1


def _node_error(answer, node: str) -> list[str]:
    assert answer.status_code == 400, answer.text
    assert "Traceback" not in answer.text
    errors = answer.json()["node_errors"][node]["errors"]
    return [error["details"] for error in errors]


def test_a_missing_engine_folder_is_a_node_error_with_fastimgs_line(comfy, tiny, picture, tmp_path):
    url, _ = comfy
    missing = tmp_path / "no-engines"
    with pytest.raises(FastImgError) as expected:
        load_manifest(missing)
    workflow = _workflow(tiny[1], _upload(url, picture, "a.png"))
    workflow["2"]["inputs"]["engines_folder"] = str(missing)
    assert _node_error(_queue(url, workflow), "2") == [f"engines_folder - {expected.value}"]
    assert "\n" not in str(expected.value)


def test_a_broken_engine_folder_is_a_node_error_with_fastimgs_line(comfy, tiny, picture, tmp_path):
    url, _ = comfy
    broken = tmp_path / "broken"
    shutil.copytree(tiny[1], broken)
    (unet,) = [p for p in broken.rglob("*.onnx") if "unet" in p.as_posix()][:1]
    unet.write_bytes(unet.read_bytes()[:-100])
    with pytest.raises(FastImgError) as expected:
        load_manifest(broken)
    workflow = _workflow(broken, _upload(url, picture, "b.png"))
    assert _node_error(_queue(url, workflow), "2") == [f"engines_folder - {expected.value}"]


def test_an_unknown_sampler_is_a_node_error_with_fastimgs_line(comfy, tiny, picture):
    url, _ = comfy
    (scheduler,) = [setting for setting in SETTINGS if setting.name == "scheduler"]
    with pytest.raises(FastImgError) as expected:
        scheduler.check("karras_magic")
    workflow = _workflow(
        tiny[1], _upload(url, picture, "c.png"), **{"3": {"sampler": "karras_magic"}}
    )
    assert _node_error(_queue(url, workflow), "3") == [f"sampler - {expected.value}"]


def test_a_mask_of_another_size_is_an_execution_error_with_fastimgs_line(comfy, tiny, picture):
    url, _ = comfy
    small = picture.resize((32, 32)).convert("RGBA")
    with pytest.raises(FastImgError) as expected:
        to_pil_masks(np.zeros((1, 32, 32), np.float32), picture.size)
    workflow = _workflow(tiny[1], _upload(url, picture, "d.png"))
    workflow["5"] = {"class_type": "LoadImage", "inputs": {"image": _upload(url, small, "e.png")}}
    workflow["3"]["inputs"]["mask"] = ["5", 1]
    queued = _queue(url, workflow)
    assert queued.status_code == 200, queued.text
    entry = _finished(url, queued.json()["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    (error,) = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["node_type"] == "FastimgImg2Img"
    assert error["exception_type"] == "fastimg.errors.InputError"
    assert error["exception_message"].strip() == str(expected.value)
    assert "\n" not in error["exception_message"].strip()


LOAD_AND_READ_BACK = """
const [done] = arguments;
(async () => {
  try {
    const templates = await (await fetch("/api/workflow_templates")).json();
    // what the template browser does with a custom node's example workflow
    const page = await (await fetch(
      "/api/workflow_templates/comfyui-fastimg/fastimg_img2img.json")).json();
    await window.app.loadGraphData(page, true, true, "fastimg_img2img");
    const queued = await window.app.graphToPrompt();
    const widgets = Object.fromEntries(window.app.graph.nodes.map((node) => [String(node.id),
      Object.fromEntries((node.widgets || []).map((widget) => [widget.name, widget.value]))]));
    done({templates: templates, output: queued.output, widgets: widgets});
  } catch (error) { done({error: String(error)}); }
})();
"""


def test_the_example_workflow_opens_from_comfyuis_templates_as_its_api_twin(comfy):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    url, base = comfy
    workflow = json.loads((base / "custom_nodes" / "comfyui-fastimg" / API_WORKFLOW).read_text())
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    try:
        driver.set_script_timeout(120)
        driver.get(url)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not driver.execute_script("return !!(window.app && window.app.graph)"):
            assert time.monotonic() < deadline, "ComfyUI's page did not load"
            time.sleep(1)
        read = driver.execute_async_script(LOAD_AND_READ_BACK)
    finally:
        driver.quit()
    assert "error" not in read, read
    assert read["templates"]["comfyui-fastimg"] == [Path(WORKFLOW).stem]
    assert {node: read["output"][node]["class_type"] for node in read["output"]} == {
        node: workflow[node]["class_type"] for node in workflow
    }
    defaults = {"3": {"control_scale": 0.8, "lora_scales": ""}}  # the optional widgets
    for node, data in workflow.items():  # the installed twins name the same engines
        assert read["output"][node]["inputs"] == {**data["inputs"], **defaults.get(node, {})}
    assert read["widgets"]["3"]["control_after_generate"] == "fixed"  # ComfyUI's seed control
