"""A1111's /sdapi/v1 through the real `webuiapi` client against a live server on the tiny model:
its images equal /v1/img2img's with the same settings and seeds, its listings, its refusals."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
webuiapi = pytest.importorskip("webuiapi")

from fastimg.media.label_reader import read_labels  # noqa: E402
from fastimg.media.vocabulary import TRAINED_ALGORITHMIC_MEDIA  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from tests.serve.harness import (  # noqa: E402
    Gated,
    count,
    decoded,
    gated_server,
    live,
    ready,
    wait_for,
)

A1111 = dict(prompt="a cat", denoising_strength=0.6, steps=3, cfg_scale=5, sampler_name="Euler")
OURS = {"prompt": "a cat", "strength": "0.6", "steps": "3", "guidance": "5", "sampler": "euler"}


@pytest.fixture(scope="module")
def server(tiny):
    """A live server on the tiny model (the engines loaded by the app) and a webuiapi client."""
    options = ServeOptions(engines=tiny[1], backend="onnxruntime", precision="fp32")
    with live(options) as (client, service):
        ready(client)
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        yield client, service, api


def ours(client, image: Image.Image, **fields) -> np.ndarray:
    """/v1/img2img's image for `image` with OURS and `fields`."""
    data = io.BytesIO()
    image.save(data, format="PNG")
    files = {"image": ("in.png", data.getvalue(), "image/png")}
    response = client.post("/v1/img2img", files=files, data={**OURS, **fields})
    assert response.status_code == 200, response.text
    return decoded(response.content)


def test_webuiapi_img2img_equals_v1_img2img_seed_by_seed(server, photo, tmp_path):
    client, service, api = server
    ok = count(service, "ok") or 0
    result = api.img2img(images=[photo], width=90, height=68, seed=11, batch_size=2, **A1111)
    assert len(result.images) == 2
    for image, seed in zip(result.images, (11, 12), strict=True):
        expected = ours(client, photo, seed=str(seed))
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)
    assert result.info["seed"] == 11 and result.info["all_seeds"] == [11, 12]
    assert result.info["sampler_name"] == "Euler" and result.info["width"] == 90
    assert "Seed: 12" in result.info["infotexts"][1]
    assert result.info["infotexts"][0].startswith("a cat\nSteps: 3, Sampler: Euler, CFG scale: 5")
    assert result.parameters["prompt"] == "a cat" and result.parameters["init_images"] is None
    assert count(service, "ok") == ok + 3  # the A1111 request and ours, counted alike

    saved = tmp_path / "a1111.png"
    saved.write_bytes(base64.b64decode(result.json["images"][0]))
    labels = read_labels(saved)
    assert labels["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert labels["parameters"] == result.info["infotexts"][0]


@pytest.mark.parametrize("mode", [0, 1])
def test_width_and_height_resize_as_a1111_does(server, photo, mode):
    client, _, api = server
    result = api.img2img(images=[photo], width=48, height=64, seed=5, resize_mode=mode, **A1111)
    if mode == 0:  # just resize: stretched
        resized = photo.resize((48, 64), Image.LANCZOS)
    else:  # crop and resize: 90x68 scaled to cover 48x64 (84x64), its middle kept
        resized = Image.new("RGB", (48, 64))
        resized.paste(photo.resize((84, 64), Image.LANCZOS), box=(24 - 42, 0))
    assert result.image.size == (48, 64)
    expected = ours(client, resized, seed="5")
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), expected)


def test_a_random_seed_is_reported_and_reproduces(server, photo):
    client, _, api = server
    result = api.img2img(images=[photo], width=90, height=68, seed=-1, **A1111)
    seed = result.info["seed"]
    assert result.info["all_seeds"] == [seed] and 0 <= seed < 2**32
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")),
                                  ours(client, photo, seed=str(seed)))  # fmt: skip


def test_the_listings_clients_read(server, pipe):
    client, _, api = server
    assert {"Euler a", "Euler", "DDIM", "DPM++ 2M", "LCM"} <= set(api.util_get_sampler_names())
    name, short = pipe.model_info["fastimg:model"], pipe.model_info["fastimg:model_hash"]
    assert api.util_get_model_names() == [f"{name} [{short}]"]
    assert api.util_get_current_model() == f"{name} [{short}]"
    assert api.get_options()["samples_format"] == "png"
    api.util_set_model(f"{name} [{short}]")  # the model it runs: accepted
    progress = api.get_progress()
    assert progress["state"]["job_count"] == 0 and progress["progress"] == 0.0
    assert "automatic" in api.util_get_scheduler_names()
    # what plugins list at start-up and fastimg has none of: empty, in A1111's shapes
    assert api.get_upscalers() == [] and api.get_sd_vae() == [] and api.get_loras() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_prompt_styles() == [] and api.get_face_restorers() == []


def test_routes_fastimg_does_not_serve_say_which_it_does(server):
    client, _, _ = server
    txt2img = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat"})
    assert txt2img.status_code == 404
    assert "fastimg does not serve /sdapi/v1/txt2img" in txt2img.json()["detail"]
    assert "/sdapi/v1/img2img" in txt2img.json()["detail"]


def test_another_model_cannot_be_chosen(server):
    _, _, api = server
    with pytest.raises(RuntimeError) as raised:
        wanted = {"sd_model_checkpoint": "other.safetensors"}
        api._to_api_result(api.session.post(f"{api.baseurl}/options", json=wanted))
    assert raised.value.args[0] == 422 and "sd_model_checkpoint" in raised.value.args[1]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"tiling": True}, "the field 'tiling' (True) is one fastimg cannot honour"),
        ({"restore_faces": True}, "'restore_faces'"),
        ({"sampler_name": "Heun"}, "sampler_name 'Heun' is not one fastimg runs: send one of"),
        ({"cfg_scale": -1}, "Invalid value for 'cfg_scale'"),
        ({"denoising_strength": 1.5}, "Invalid value for 'denoising_strength'"),
        ({"resize_mode": 2}, "resize_mode 2 is not supported"),
        ({"subseed_strength": 0.5}, "'subseed_strength'"),
        ({"styles": ["cinematic"]}, "'styles'"),
        ({"override_settings": {"CLIP_stop_at_last_layers": 2}}, "CLIP_stop_at_last_layers"),
        ({"alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face"}]}}}, "ADetailer"),
        ({"sampler_name": "DDIM", "eta": 1.0}, "eta 1.0 with 'DDIM'"),
        ({"batch_size": 0}, "batch_size must be a whole number of at least 1"),
    ],
)
def test_what_fastimg_cannot_honour_is_refused_by_name(server, photo, fields, message):
    _, service, api = server
    refused = count(service, "422") or 0
    with pytest.raises(RuntimeError) as raised:
        api.img2img(images=[photo], **{**A1111, "width": 90, "height": 68, **fields})
    status, text = raised.value.args
    assert status == 422 and message in json.loads(text)["detail"]
    assert count(service, "422") == refused + 1


def test_a_request_with_only_an_image_runs_with_a1111s_defaults(server, photo):
    client, _, _ = server
    data = io.BytesIO()
    photo.save(data, format="PNG")
    body = {"init_images": [base64.b64encode(data.getvalue()).decode()], "width": 64,
            "height": 64}  # fmt: skip
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "" and info["steps"] == 20 and info["denoising_strength"] == 0.75
    assert info["cfg_scale"] == 7.0 and len(response.json()["images"]) == 1


def test_options_bodies_are_held_to_a_small_size(server):
    client, _, _ = server
    big = client.post("/sdapi/v1/options", json={"sd_vae": "x" * (70 << 10)})
    assert big.status_code == 413
    broken = client.post(
        "/sdapi/v1/options", content=b"{", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]


def png_bytes(image) -> bytes:
    data = io.BytesIO()
    image.save(data, format="PNG")
    return data.getvalue()


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"override_settings": [1]}, "override_settings must be an object"),
        ({"alwayson_scripts": "x"}, "alwayson_scripts must be an object"),
        ({"alwayson_scripts": {"controlnet": {"args": 5}}}, "alwayson_scripts.controlnet must"),
        ({"seed_resize_from_h": "big"}, "'seed_resize_from_h'"),
        ({"prompt": 5}, "'prompt'"),
        ({"steps": "many"}, "Invalid value for 'steps'"),
        ({"width": 64.5}, "width must be a whole number"),
        ({"seed": "11"}, "seed must be a whole number"),
        ({"init_images": "abc"}, "init_images must hold one image"),
        ({"mask": "truncated", "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False},
         "the field 'mask' cannot be read as an image"),
    ],
)  # fmt: skip
def test_values_of_the_wrong_kind_are_refused_by_name_not_failed(server, photo, fields, message):
    client, service, _ = server
    errors = count(service, "error") or 0
    image = base64.b64encode(png_bytes(photo)).decode()
    if fields.get("mask") == "truncated":
        fields = {**fields, "mask": base64.b64encode(png_bytes(photo)[:80]).decode()}
    body = {"init_images": [image], "width": 90, "height": 68, "steps": 3, **fields}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422 and message in response.json()["detail"], response.text
    assert (count(service, "error") or 0) == errors  # (no 500)


def test_unknown_fields_and_missing_images_are_refused(server):
    client, _, _ = server
    unknown = client.post("/sdapi/v1/img2img", json={"init_images": ["x"], "colour": "red"})
    assert unknown.status_code == 422 and "unknown field 'colour'" in unknown.json()["detail"]
    none = client.post("/sdapi/v1/img2img", json={"prompt": "a cat"})
    assert none.status_code == 422 and "init_images must hold one image" in none.json()["detail"]
    broken = client.post("/sdapi/v1/img2img", json={"init_images": ["*not base64*"]})
    assert broken.status_code == 422 and "'init_images' is not valid base64" in broken.text


def test_the_api_key_guards_the_a1111_routes(pipe, photo):
    with live(ServeOptions(api_key="s3cret"), lambda: pipe) as (client, service):
        ready(client)
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        with pytest.raises(RuntimeError) as raised:
            api.img2img(images=[photo], width=90, height=68, seed=3, **A1111)
        assert raised.value.args[0] == 401 and count(service, "401") == 1
        wrong = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port,
                                  username="me", password="wrong")  # fmt: skip
        assert wrong.session.get(f"{wrong.baseurl}/samplers").status_code == 401  # (guarded too)
        # the key as the password of A1111's --api-auth (webuiapi's username and password)
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port,
                                username="me", password="s3cret")  # fmt: skip
        result = api.img2img(images=[photo], width=90, height=68, seed=3, **A1111)
        assert result.image.size == (88, 64)  # (the engines' multiple of 8, as /v1/img2img)
        bearer = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        bearer.session.headers["Authorization"] = "Bearer s3cret"
        assert bearer.util_get_sampler_names()


def test_interrupt_stops_the_a1111_requests_in_flight(pipe, photo):
    with gated_server(pipe) as (client, service, gated, pool):
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        answer = pool.submit(api.img2img, images=[photo], width=90, height=68, seed=1,
                             batch_size=2, **A1111)  # fmt: skip
        assert gated.entered.wait(30)  # the first image runs, the second waits
        progress = api.get_progress()["state"]
        assert progress["job_count"] == 2 and progress["job"] == "img2img"
        assert api.interrupt() is None
        gated.release.set()
        result = answer.result(60)
        assert result.images == [] and result.info["interrupted"] is True
        assert result.info["all_seeds"] == [1, 2]
        wait_for(lambda: service.admission.running == 0)
        assert gated.steps == [1]  # stopped at its next step; the second never ran


def halves(size, left: int, right: int, mode: str = "L") -> Image.Image:
    """An image of `size`, its left half `left` and its right half `right`."""
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


INPAINT = dict(mask_blur=0, inpainting_fill=1, inpaint_full_res=False)
PIPE_CALL = dict(strength=0.6, num_inference_steps=3, guidance_scale=5.0, scheduler="euler")


@pytest.mark.parametrize("invert", [0, 1])
def test_a_mask_inpaints_as_the_pipeline_does(server, pipe, photo, invert):
    _, _, api = server
    mask = halves(photo.size, 255, 0)  # the left half repainted
    sent = mask if not invert else halves(photo.size, 0, 255)
    result = api.img2img(images=[photo], mask_image=sent, inpainting_mask_invert=invert,
                         width=90, height=68, seed=11, **INPAINT, **A1111)  # fmt: skip
    # (A1111 pastes the original back outside the mask: keep_unmasked)
    expected = pipe("a cat", photo, mask_image=mask, seed=11, keep_unmasked=True, **PIPE_CALL)[0]
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected))
    unmasked = pipe("a cat", photo, seed=11, **PIPE_CALL)[0]
    assert not np.array_equal(np.asarray(result.image.convert("RGB")), np.asarray(unmasked))


def test_a_masks_alpha_marks_what_is_repainted(server, pipe, photo):
    _, _, api = server
    mask = halves(photo.size, (0, 0, 0, 255), (0, 0, 0, 0), "RGBA")  # opaque: repainted
    result = api.img2img(images=[photo], mask_image=mask, width=90, height=68, seed=4,
                         **INPAINT, **A1111)  # fmt: skip
    expected = pipe("a cat", photo, mask_image=halves(photo.size, 255, 0), seed=4,
                    keep_unmasked=True, **PIPE_CALL)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(result.image.convert("RGB")), np.asarray(expected[0]))


def a1111_json(client, photo, mask, status=200, **fields):
    """/sdapi/v1/img2img's image for A1111 JSON of `fields` (or its 422 detail)."""
    body = {"init_images": [base64.b64encode(png_bytes(photo)).decode()], "width": 90,
            "height": 68, "mask": base64.b64encode(png_bytes(mask)).decode(), **fields}  # fmt: skip
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == status, response.text
    if status != 200:
        return response.json()["detail"]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return np.asarray(image.convert("RGB"))


def block(size, box) -> Image.Image:
    """A black mask of `size`, white (repainted) inside `box` (left, top, right, bottom)."""
    image = Image.new("L", size, 0)
    image.paste(255, box)
    return image


@pytest.mark.parametrize(
    "fields,call",
    [
        # webuiapi's (and A1111's) defaults: blur 4, fill, only masked with no padding
        ({}, dict(mask_blur=4, padding_mask_crop=0, masked_content="fill")),
        ({"mask_blur": 3, "inpainting_fill": 1, "inpaint_full_res": True,
          "inpaint_full_res_padding": 8}, dict(mask_blur=3, padding_mask_crop=8)),
        ({"mask_blur_x": 2, "mask_blur_y": 2, "inpainting_fill": 0,
          "inpaint_full_res": False}, dict(mask_blur=2, masked_content="fill")),
        ({"mask_blur": 2, "inpainting_fill": 1, "inpaint_full_res": False,
          "inpainting_mask_invert": 1}, dict(mask_blur=2, mask_invert=True)),
    ],
)  # fmt: skip
def test_a1111s_mask_fields_are_the_pipelines_mask_settings(server, pipe, photo, fields, call):
    """mask_blur (without it, mask_blur_x and _y when alike; webuiapi has neither),
    inpaint_full_res + padding (padding_mask_crop), inpainting_fill 0 (masked_content fill:
    the masked region filled first, as A1111's masking.fill) and 1; the original pasted back
    (keep_unmasked)."""
    client, _, api = server
    mask = block(photo.size, (30, 20, 60, 50))
    if "mask_blur_x" in fields:  # (webuiapi has no mask_blur_x and _y: as A1111's JSON)
        got = a1111_json(client, photo, mask, seed=5, **{**A1111, **fields})
    else:
        result = api.img2img(images=[photo], mask_image=mask, width=90, height=68, seed=5,
                             **{**A1111, **fields})  # fmt: skip
        got = np.asarray(result.image.convert("RGB"))
    expected = pipe("a cat", photo, mask_image=mask, seed=5, keep_unmasked=True, **call,
                    **PIPE_CALL)[0]  # fmt: skip
    np.testing.assert_array_equal(got, np.asarray(expected))
    if "padding_mask_crop" in call:  # pasted back over the original, the far rows its own
        assert got.shape == (68, 90, 3) and np.array_equal(got[:8], np.asarray(photo)[:8])


@pytest.mark.parametrize("fill,content", [(2, "latent_noise"), (3, "latent_nothing")])
def test_inpainting_fill_2_and_3_are_the_pipelines_latent_fills(server, pipe, photo, fill,
                                                                content):  # fmt: skip
    """inpainting_fill 2 (latent noise) and 3 (latent nothing) run as masked_content does,
    and give another image than 1 (original)."""
    _, _, api = server
    mask = block(photo.size, (30, 20, 60, 50))
    fields = {**A1111, **INPAINT}
    got = {
        given: np.asarray(api.img2img(images=[photo], mask_image=mask, width=90, height=68,
                                      seed=5, **{**fields, "inpainting_fill": given})
                          .image.convert("RGB"))
        for given in (1, fill)
    }  # fmt: skip
    expected = pipe("a cat", photo, mask_image=mask, seed=5, keep_unmasked=True,
                    masked_content=content, **PIPE_CALL)[0]  # fmt: skip
    np.testing.assert_array_equal(got[fill], np.asarray(expected))
    assert not np.array_equal(got[fill], got[1])
    assert expected.info["fastimg:masked_content"] == content


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"inpainting_fill": 4}, "'inpainting_fill' (4) is not one of A1111's: send 0 (fill)"),
        ({"inpainting_fill": True}, "1 (original), 2 (latent noise) or 3 (latent nothing)"),
        ({"mask_blur": -1}, "the field 'mask_blur' (-1) must be a whole number of pixels"),
        ({"inpaint_full_res_padding": "wide"}, "'inpaint_full_res_padding' ('wide') must be"),
    ],
)
def test_inpainting_fields_fastimg_cannot_honour_are_refused(server, photo, fields, message):
    _, _, api = server
    with pytest.raises(RuntimeError) as raised:
        api.img2img(images=[photo], mask_image=halves(photo.size, 255, 0), width=90, height=68,
                    **fields, **A1111)  # fmt: skip
    assert raised.value.args[0] == 422 and message in json.loads(raised.value.args[1])["detail"]


class ReportsThenHolds(Gated):
    """The tiny pipeline, each run held once its first step has been reported to the server."""

    def _held(self, callback, entered, release):
        def held(step, total):
            if callback is not None:
                callback(step, total)
            if step == 1:
                entered.set()
                assert release.wait(60)

        return held


def test_progress_reports_the_running_step(pipe, photo):
    gated = ReportsThenHolds(pipe)
    try:
        with live(ServeOptions(), lambda: gated) as (client, _):
            ready(client)
            api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
            settings = {**A1111, "denoising_strength": 1.0, "steps": 4}  # (4 UNet steps)
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(api.img2img, images=[photo], width=90, height=68, seed=1,
                                     **settings)  # fmt: skip
                assert gated.entered.wait(30)
                progress = api.get_progress()
                gated.release.set()
                assert answer.result(60).image.size == (88, 64)
            assert progress["state"]["sampling_step"] == 1
            assert progress["state"]["sampling_steps"] == 4 and progress["progress"] == 0.25
            idle = api.get_progress()
            assert idle["progress"] == 0.0 and idle["state"]["job_count"] == 0
    finally:
        gated.release.set()


def test_an_a1111_batch_rides_the_servers_batching(pipe, photo):
    with gated_server(pipe, max_batch=2) as (client, service, gated, pool):
        api = webuiapi.WebUIApi(host=client.base_url.host, port=client.base_url.port)
        files = {"image": ("in.png", png_bytes(photo), "image/png")}
        holder = pool.submit(client.post, "/v1/img2img", files=files,
                             data={**OURS, "prompt": "a dog", "seed": "3"})  # fmt: skip
        assert gated.entered.wait(30)  # the slot is held: the A1111 images wait together
        answer = pool.submit(api.img2img, images=[photo], width=90, height=68, seed=11,
                             batch_size=2, **A1111)  # fmt: skip
        wait_for(lambda: service.admission.waiting == 2)
        gated.release.set()
        assert holder.result(60).status_code == 200
        result = answer.result(60)
    assert gated.batches == [["a cat", "a cat"]]  # one engine run for both images
    for image, seed in zip(result.images, (11, 12), strict=True):
        expected = pipe("a cat", photo, seed=seed, **PIPE_CALL)[0]
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))


def test_mask_blurs_that_differ_across_and_down_are_refused(server, photo):
    client, _, _ = server
    mask = block(photo.size, (30, 20, 60, 50))
    detail = a1111_json(client, photo, mask, status=422, mask_blur_x=2, mask_blur_y=3, **A1111)
    assert "mask_blur_x (2) and mask_blur_y (3) differ: fastimg blurs a mask alike" in detail
    detail = a1111_json(client, photo, mask, status=422, mask_blur_x=2, **A1111)  # (y: 4)
    assert "mask_blur_y (4) differ" in detail
