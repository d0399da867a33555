"""The web page at / in a real headless browser (Debian's chromium and chromedriver, driven by
Selenium) against a live server on the tiny model.

Screenshots are kept as test artifacts: in the folder FASTIMG_ARTIFACTS names when it is set
(CI: tests/artifacts), else in the test's tmp folder.
"""

import base64
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastimg.serve import ServeOptions  # noqa: E402
from fastimg.serve.app import PAGE_POLICY  # noqa: E402
from tests.serve.harness import decoded, live, ready  # noqa: E402
from tests.serve.test_stream import frame_count  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,900",
                     "--use-fake-ui-for-media-stream",  # allow the webcam without asking
                     "--use-fake-device-for-media-stream"):  # fmt: skip
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def artifacts(tmp_path, request):
    """Where this test's screenshots go."""
    folder = Path(os.environ.get("FASTIMG_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return lambda name: str(folder / f"{request.node.name}-{name}.png")


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def by_id(driver, name):
    return driver.find_element("id", name)


def fill(driver, **fields):
    """Set the page's fields (by element id) as a user would."""
    for name, value in fields.items():
        element = by_id(driver, name)
        if element.get_attribute("type") == "range":  # (sliders take no typing)
            driver.execute_script(
                "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
                element,
                str(value),
            )
        else:
            element.clear()
            element.send_keys(str(value))


def result_size(driver) -> tuple[int, int]:
    return tuple(driver.execute_script(
        "const r = document.getElementById('result'); return [r.naturalWidth, r.naturalHeight];"
    ))  # fmt: skip


def result_pixels_png(driver) -> bytes:
    """The result image as the page shows it, read back through a canvas."""
    data_url = driver.execute_script(
        "const r = document.getElementById('result'); const c = document.createElement('canvas');"
        "c.width = r.naturalWidth; c.height = r.naturalHeight;"
        "c.getContext('2d').drawImage(r, 0, 0); return c.toDataURL('image/png');"
    )
    return base64.b64decode(data_url.partition(",")[2])


def test_the_page_is_served_without_a_key_and_offline(pipe):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (client, service):
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == PAGE_POLICY
        assert "s3cret" not in page.text
        for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert asset.startswith("/static/"), asset  # nothing from elsewhere
            assert client.get(asset).status_code == 200


def test_an_uploaded_image_is_transformed_and_shown_with_its_timing(
    browser, pipe, picture, artifacts
):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "sampler").find_elements("tag name", "option")[1:])
        assert not by_id(browser, "control").is_displayed()  # (no ControlNet in these engines)
        by_id(browser, "file").send_keys(str(picture))
        fill(browser, prompt="a cat", steps=3, strength=0.6, seed=11, guidance=4.5)
        assert by_id(browser, "strength-value").text == "0.60"
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert result_size(browser) == (88, 64)
        assert "seed 11" in by_id(browser, "settings").text
        assert "guidance 4.5" in by_id(browser, "settings").text
        assert len(browser.find_elements("css selector", "#history img")) == 1
        assert by_id(browser, "error").is_displayed() is False
        browser.save_screenshot(artifacts("result"))

        fields = {
            "prompt": "a cat",
            "steps": "3",
            "strength": "0.6",
            "seed": "11",
            "guidance": "4.5",
        }
        http = client.post(
            "/v1/img2img", files={"image": ("in.png", picture.read_bytes())}, data=fields
        )
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)), decoded(http.content))

        by_id(browser, "random").click()  # a second one, with a new seed, joins the history
        seed = by_id(browser, "seed").get_attribute("value")
        by_id(browser, "transform").click()
        wait(browser, lambda d: len(d.find_elements("css selector", "#history img")) == 2)
        assert f"seed {seed}" in by_id(browser, "settings").text
        browser.find_elements("css selector", "#history img")[1].click()  # the first again
        assert "seed 11" in by_id(browser, "settings").text


def test_a_refused_request_shows_the_servers_message(browser, pipe, picture, artifacts):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        by_id(browser, "file").send_keys(str(picture))
        fill(browser, prompt="a cat", steps=4, strength=0.1)  # rounds to zero steps
        by_id(browser, "transform").click()
        wait(browser, lambda d: by_id(d, "error").is_displayed())
        error = by_id(browser, "error").text
        assert error.startswith("422: ") and "runs zero denoising steps" in error
        browser.save_screenshot(artifacts("error"))


def test_with_an_api_key_the_page_asks_for_it(browser, pipe, picture):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "key-field").is_displayed())
        by_id(browser, "file").send_keys(str(picture))
        fill(browser, prompt="a cat", steps=3, strength=0.6)
        by_id(browser, "transform").click()
        wait(browser, lambda d: by_id(d, "error").is_displayed())
        assert by_id(browser, "error").text.startswith("401: missing or wrong API key")
        fill(browser, key="s3cret")
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert by_id(browser, "error").is_displayed() is False


def test_stream_mode_sends_webcam_frames_and_shows_frames_per_second(browser, pipe, artifacts):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        fill(browser, prompt="a cat", steps=2, strength=0.5, seed=5)
        by_id(browser, "webcam").click()  # Chromium's fake camera
        wait(browser, lambda d: by_id(d, "stream").is_displayed())
        by_id(browser, "stream").click()
        wait(browser, lambda d: "frames/s" in by_id(d, "timing").text)
        wait(browser, lambda d: frame_count(service, "ok") >= 3)
        assert re.search(r"[\d.]+ frames/s · [\d.]+ ms per frame · \d+ frames dropped",
                         by_id(browser, "timing").text)  # fmt: skip
        width, height = result_size(browser)
        assert width % 8 == 0 and max(width, height) <= 512
        assert by_id(browser, "settings").text == "stream · seed 5"
        browser.save_screenshot(artifacts("stream"))
        by_id(browser, "stream").click()  # stop
        wait(browser, lambda d: by_id(d, "stream").text == "Stream")
        wait(browser, lambda d: not service.streams)


def _page_mask(driver) -> np.ndarray:
    """The mask the page sends (white: painted), read back as grayscale."""
    import io

    from PIL import Image

    data_url = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "maskBlob().then((b) => { const r = new FileReader();"
        "r.onload = () => done(r.result); r.readAsDataURL(b); });"
    )
    with Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))) as image:
        return np.asarray(image.convert("L"))


def test_a_mask_painted_with_the_brush_inpaints(browser, pipe, picture, tmp_path, artifacts):
    """The brush paints white over the input, the eraser takes it back, an uploaded mask
    replaces it; the page sends the mask (and keep_unmasked, masked_content) beside the image,
    as the HTTP API takes them."""
    from PIL import Image
    from selenium.webdriver import ActionChains
    from selenium.webdriver.support.ui import Select

    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        by_id(browser, "file").send_keys(str(picture))
        wait(browser, lambda d: by_id(d, "mask").is_displayed())
        fill(browser, prompt="a cat", steps=3, strength=0.6, seed=11)
        canvas = by_id(browser, "mask")
        by_id(browser, "brush").click()
        strokes = ActionChains(browser).move_to_element_with_offset(canvas, -20, 0)
        strokes.click_and_hold().move_by_offset(40, 0).move_by_offset(0, 10).release().perform()
        painted = _page_mask(browser)
        assert painted.shape == (68, 90) and 100 < (painted > 127).sum() < 68 * 90 / 2
        by_id(browser, "eraser").click()
        strokes = ActionChains(browser).move_to_element_with_offset(canvas, -20, 0)
        strokes.click_and_hold().move_by_offset(10, 0).release().perform()
        erased = _page_mask(browser)
        assert (erased > 127).sum() < (painted > 127).sum()
        by_id(browser, "keep-unmasked").click()
        Select(by_id(browser, "masked-content")).select_by_value("latent_noise")
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert "mask given" in by_id(browser, "settings").text
        browser.save_screenshot(artifacts("mask"))
        fields = {"prompt": "a cat", "steps": "3", "strength": "0.6", "seed": "11",
                  "keep_unmasked": "true", "masked_content": "latent_noise"}  # fmt: skip
        Image.fromarray(erased).save(tmp_path / "mask.png")
        files = {"image": ("in.png", picture.read_bytes()),
                 "mask": ("mask.png", (tmp_path / "mask.png").read_bytes())}  # fmt: skip
        http = client.post("/v1/img2img", files=files, data=fields)
        assert http.status_code == 200, http.text
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)), decoded(http.content))

        uploaded = np.zeros((68, 90), np.uint8)
        uploaded[:, 45:] = 255
        Image.fromarray(uploaded).save(tmp_path / "upload.png")
        by_id(browser, "mask-file").send_keys(str(tmp_path / "upload.png"))
        wait(browser, lambda d: (_page_mask(d) > 127).sum() == 68 * 45)
        by_id(browser, "clear-mask").click()
        assert (_page_mask(browser) == 0).all()


# The stream's settings message as the page sends it (installed in the page before a stream).
RECORD_STREAM = """
window.streamed = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data === "string") window.streamed.push(JSON.parse(data));
  return send.call(this, data);
};
"""


def test_stream_mode_sends_the_painted_mask_once_with_its_options(
    browser, pipe, picture, artifacts
):
    from selenium.webdriver import ActionChains

    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        by_id(browser, "file").send_keys(str(picture))
        wait(browser, lambda d: by_id(d, "mask").is_displayed())
        fill(browser, prompt="a cat", steps=2, strength=0.5, seed=5)
        by_id(browser, "brush").click()
        strokes = ActionChains(browser).move_to_element_with_offset(by_id(browser, "mask"), -20, 0)
        strokes.click_and_hold().move_by_offset(40, 0).release().perform()
        painted = _page_mask(browser)
        by_id(browser, "keep-unmasked").click()
        browser.execute_script(RECORD_STREAM)
        by_id(browser, "webcam").click()  # Chromium's fake camera
        wait(browser, lambda d: by_id(d, "stream").is_displayed())
        by_id(browser, "stream").click()
        wait(browser, lambda d: frame_count(service, "ok") >= 2)
        assert by_id(browser, "settings").text == "stream · seed 5 · mask given"
        assert by_id(browser, "error").is_displayed() is False
        (sent,) = browser.execute_script("return window.streamed;")
        assert sent["keep_unmasked"] == "true" and "mask_padding" not in sent
        assert "masked_content" not in sent  # (the image: the default, not sent)
        import io

        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(sent["mask"]))) as mask:
            np.testing.assert_array_equal(np.asarray(mask.convert("L")), painted)
        assert 100 < (painted > 127).sum()
        browser.save_screenshot(artifacts("stream-mask"))
        by_id(browser, "stream").click()  # stop
        wait(browser, lambda d: not service.streams)


def test_a_prompt_or_seed_changed_while_streaming_goes_as_a_change_message(browser, pipe):
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        fill(browser, prompt="a cat", steps=2, strength=0.5, seed=5)
        browser.execute_script(RECORD_STREAM)
        by_id(browser, "webcam").click()  # Chromium's fake camera
        wait(browser, lambda d: by_id(d, "stream").is_displayed())
        by_id(browser, "stream").click()
        wait(browser, lambda d: frame_count(service, "ok") >= 1)
        fill(browser, prompt="a dog in the snow", seed=9)
        wait(browser, lambda d: by_id(d, "settings").text == "stream · seed 9 · changed")
        ok = frame_count(service, "ok")
        wait(browser, lambda d: frame_count(service, "ok") >= ok + 2)  # the stream goes on
        sent = browser.execute_script("return window.streamed;")
        assert sent[0]["prompt"] == "a cat" and sent[0]["seed"] == "5"
        changes = {key: value for change in sent[1:] for key, value in change.items()}
        assert changes == {"prompt": "a dog in the snow", "seed": "9"}
        (stream,) = service.streams
        assert stream.template.job.call.prompt == "a dog in the snow"
        assert stream.template.job.call.seed == 9
        assert by_id(browser, "error").is_displayed() is False
        by_id(browser, "stream").click()  # stop
        wait(browser, lambda d: not service.streams)


# The page's requests, as the server receives them: each FormData's entries, files as
# [name, file name, size] (installed in the page before a transform).
RECORD_REQUESTS = """
window.sent = [];
const original = window.fetch;
window.fetch = (url, init) => {
  if (init && init.body instanceof FormData) {
    window.sent.push([...init.body.entries()].map(([name, value]) =>
      value instanceof Blob ? [name, value.name, value.size] : [name, value]));
  }
  return original(url, init);
};
"""


@pytest.fixture(scope="module")
def control_pipe(tiny_controlnet):
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    return Img2ImgPipeline.from_engines(tiny_controlnet[1], backend="onnxruntime", precision="fp32")


def test_a_control_image_and_preprocessor_steer_the_transform(
    browser, control_pipe, picture, photo, tmp_path, artifacts
):
    sketch = tmp_path / "sketch.png"
    photo.transpose(0).save(sketch)
    with live(ServeOptions(), lambda: control_pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "control").is_displayed())
        assert "controlnet" in by_id(browser, "control").text  # the ControlNet's name
        options = by_id(browser, "control-preprocess").find_elements("tag name", "option")
        assert [o.get_attribute("value") for o in options] == ["", "canny", "scribble"]
        by_id(browser, "file").send_keys(str(picture))
        by_id(browser, "control-file").send_keys(str(sketch))
        wait(browser, lambda d: by_id(d, "control-preview").is_displayed())
        by_id(browser, "control-preprocess").send_keys("scribble")
        fill(browser, prompt="a cat", steps=3, strength=0.6, seed=11, guidance=5)
        fill(browser, **{"control-scale": 0.5})
        browser.execute_script(RECORD_REQUESTS)
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert by_id(browser, "error").is_displayed() is False
        (sent,) = browser.execute_script("return window.sent;")
        fields = dict((entry[0], entry[1:]) for entry in sent)
        assert fields["image"] == ["in.png", picture.stat().st_size]
        assert fields["control_image"] == ["sketch.png", sketch.stat().st_size]
        assert fields["control_preprocess"] == ["scribble"] and fields["control_scale"] == ["0.5"]
        assert "control scribble 0.5" in by_id(browser, "settings").text
        browser.save_screenshot(artifacts("control"))

        form = {"prompt": "a cat", "steps": "3", "strength": "0.6", "seed": "11", "guidance": "5",
                "control_preprocess": "scribble", "control_scale": "0.5"}  # fmt: skip
        files = {"image": ("in.png", picture.read_bytes()),
                 "control_image": ("sketch.png", sketch.read_bytes())}  # fmt: skip
        http = client.post("/v1/img2img", files=files, data=form)
        assert http.status_code == 200, http.text
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)), decoded(http.content))
        from_input = client.post("/v1/img2img", files={"image": files["image"]}, data=form)
        assert not np.array_equal(decoded(from_input.content), decoded(http.content))

        by_id(browser, "control-clear").click()  # the preprocessor alone: from the input image
        assert not by_id(browser, "control-preview").is_displayed()
        by_id(browser, "transform").click()
        wait(browser, lambda d: len(d.find_elements("css selector", "#history img")) == 2)
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        second = browser.execute_script("return window.sent;")[1]
        assert [entry[0] for entry in second if entry[0].startswith("control")] == [
            "control_preprocess", "control_scale"]  # fmt: skip
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)),
                                      decoded(from_input.content))  # fmt: skip


def test_a_control_image_or_preprocessor_per_controlnet(
    browser, tiny_multi_controlnet, picture, photo, tmp_path, artifacts
):
    """One unit per ControlNet: the first ControlNet's image and the second's preprocessor
    (from the input image) go as the HTTP API's lists; a ControlNet left empty before a used
    one runs at scale 0 on the input image."""
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(tiny_multi_controlnet[1], backend="onnxruntime",
                                        precision="fp32")  # fmt: skip
    sketch = tmp_path / "sketch.png"
    photo.transpose(0).save(sketch)
    with live(ServeOptions(), lambda: pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "control").is_displayed())
        assert "controlnet_1" in by_id(browser, "control").text  # a unit each, named
        by_id(browser, "file").send_keys(str(picture))
        by_id(browser, "control-file").send_keys(str(sketch))
        wait(browser, lambda d: by_id(d, "control-preview").is_displayed())
        by_id(browser, "control-preprocess-1").send_keys("scribble")
        fill(browser, prompt="a cat", steps=3, strength=0.6, seed=11, guidance=5)
        fill(browser, **{"control-scale": 0.5, "control-scale-1": 1.5})
        browser.execute_script(RECORD_REQUESTS)
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert by_id(browser, "error").is_displayed() is False, by_id(browser, "error").text
        (sent,) = browser.execute_script("return window.sent;")
        fields = [entry for entry in sent if entry[0].startswith("control")]
        assert fields == [["control_image", "sketch.png", sketch.stat().st_size],
                          ["control_preprocess", "none;scribble"],
                          ["control_scale", "0.5;1.5"]]  # fmt: skip
        browser.save_screenshot(artifacts("two-controlnets"))
        form = {"prompt": "a cat", "steps": "3", "strength": "0.6", "seed": "11", "guidance": "5",
                "control_preprocess": "none;scribble", "control_scale": "0.5;1.5"}  # fmt: skip
        files = [("image", ("in.png", picture.read_bytes())),
                 ("control_image", ("sketch.png", sketch.read_bytes()))]  # fmt: skip
        http = client.post("/v1/img2img", files=files, data=form)
        assert http.status_code == 200, http.text
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)), decoded(http.content))

        by_id(browser, "control-clear").click()  # the first ControlNet left empty
        by_id(browser, "control-preprocess-1").send_keys("none")
        by_id(browser, "control-file-1").send_keys(str(sketch))
        by_id(browser, "transform").click()
        wait(browser, lambda d: len(d.find_elements("css selector", "#history img")) == 2)
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        assert by_id(browser, "error").is_displayed() is False, by_id(browser, "error").text
        second = browser.execute_script("return window.sent;")[1]
        fields = [entry for entry in second if entry[0].startswith("control")]
        assert fields == [["control_image", "in.png", picture.stat().st_size],
                          ["control_image", "sketch.png", sketch.stat().st_size],
                          ["control_scale", "0;1.5"]]  # fmt: skip


def test_the_loaded_loras_get_a_scale_each_and_steer_the_transform(
    browser, tiny, picture, tmp_path, artifacts
):
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from fastimg_export.random_models import write_random_model

    engines = shutil.copytree(tiny[1], tmp_path / "engines")
    styles = [write_random_model("tiny-lora", tmp_path / f"{name}.safetensors", seed=k)
              for k, name in enumerate(("ink", "oil"))]  # fmt: skip
    options = ServeOptions(engines=engines, backend="onnxruntime", precision="fp32",
                           loras=(f"{styles[0]}:0.8", f"{styles[1]}:0"))  # fmt: skip
    with live(options) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "loras").is_displayed())
        assert by_id(browser, "lora-ink").get_attribute("value") == "0.8"
        by_id(browser, "file").send_keys(str(picture))
        fill(browser, prompt="a cat", steps=3, strength=0.6, seed=11, guidance=5)
        fill(browser, **{"lora-ink": 0, "lora-oil": 0.5})
        browser.execute_script(RECORD_REQUESTS)
        by_id(browser, "transform").click()
        wait(browser, lambda d: re.fullmatch(r"\d+ ms", by_id(d, "timing").text))
        (sent,) = browser.execute_script("return window.sent;")
        assert dict((entry[0], entry[1:]) for entry in sent)["lora_scales"] == ["oil:0.5"]
        browser.save_screenshot(artifacts("loras"))
        form = {"prompt": "a cat", "steps": "3", "strength": "0.6", "seed": "11", "guidance": "5",
                "lora_scales": "oil:0.5"}  # fmt: skip
        http = client.post("/v1/img2img", files={"image": ("in.png", picture.read_bytes())},
                           data=form)  # fmt: skip
        assert http.status_code == 200, http.text
        np.testing.assert_array_equal(decoded(result_pixels_png(browser)), decoded(http.content))


def test_stream_mode_sends_the_control_image_once_with_the_settings(
    browser, control_pipe, photo, tmp_path
):
    sketch = tmp_path / "sketch.png"
    photo.transpose(0).save(sketch)
    with live(ServeOptions(), lambda: control_pipe) as (client, service):
        ready(client)
        browser.get(str(client.base_url) + "/")
        wait(browser, lambda d: by_id(d, "control").is_displayed())
        by_id(browser, "control-file").send_keys(str(sketch))
        wait(browser, lambda d: by_id(d, "control-preview").is_displayed())
        fill(browser, prompt="a cat", steps=2, strength=0.5, seed=5)
        browser.execute_script(RECORD_STREAM)
        by_id(browser, "webcam").click()  # Chromium's fake camera
        wait(browser, lambda d: by_id(d, "stream").is_displayed())
        by_id(browser, "stream").click()
        wait(browser, lambda d: frame_count(service, "ok") >= 2)
        assert by_id(browser, "error").is_displayed() is False
        (sent,) = browser.execute_script("return window.streamed;")
        assert [base64.b64decode(image) for image in sent["control_image"]] == [
            sketch.read_bytes()]  # fmt: skip
        (stream,) = service.streams
        assert stream.template.controls == (sketch.read_bytes(),)
        by_id(browser, "stream").click()  # stop
        wait(browser, lambda d: not service.streams)
