"""The Service's admission and batching through a live server on the tiny model, its runs held
at their first step (Gated) so that queueing, deadlines and disconnects are decided by the test,
not by timing."""

import functools
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from fastimg.errors import InputError  # noqa: E402
from fastimg.media.images import load_image  # noqa: E402
from fastimg.serve import ServeOptions  # noqa: E402
from fastimg.serve.admission import TooLarge  # noqa: E402
from fastimg.serve.requests import Body  # noqa: E402
from fastimg.serve.service import Service  # noqa: E402
from tests.serve.harness import (  # noqa: E402
    CALL,
    Gated,
    count,
    decoded,
    gated_server,
    live,
    multipart,
    raw_request,
    ready,
    wait_for,
)


def test_a_full_queue_is_answered_429_with_retry_after(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=1) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        second = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="second"))
        wait_for(lambda: service.admission.waiting == 1)
        third = client.post("/v1/img2img", **multipart(picture, prompt="third"))
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        gated.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert gated.prompts == ["first", "second"]
        assert count(service, "429") == 1 and count(service, "ok") == 2


def test_requests_past_their_deadline_are_answered_504(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2, timeout=2.0) as (client, service, gated, pool):
        running = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="runs"))
        wait_for(lambda: service.admission.running == 1)
        queued = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="waits"))
        assert running.result().status_code == 504
        assert queued.result().status_code == 504
        assert "deadline" in queued.result().json()["detail"]
        gated.release.set()
        wait_for(lambda: service.admission.running == 0)
        assert "waits" not in gated.prompts  # the queued one never ran
        assert gated.steps in ([], [1])  # and the running one stopped at its next step
        assert count(service, "timeout") == 2


def test_a_client_that_leaves_the_queue_is_never_run(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        leaver = raw_request(client, picture, prompt="leaver")
        wait_for(lambda: service.admission.waiting == 1)
        leaver.close()
        wait_for(lambda: count(service, "disconnected") == 1)
        assert service.admission.waiting == 0
        gated.release.set()
        assert first.result().status_code == 200
        wait_for(lambda: service.admission.running == 0)
        assert gated.prompts == ["first"]


def test_a_client_that_leaves_while_running_stops_the_run_at_the_next_step(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        leaver = raw_request(client, picture, prompt="leaver", steps="4", strength="1")
        assert gated.entered.wait(30)
        leaver.close()
        wait_for(lambda: count(service, "disconnected") == 1)
        gated.release.set()
        wait_for(lambda: service.admission.running == 0)
        assert gated.steps == [1]  # of 4
        after = client.post("/v1/img2img", **multipart(picture))  # the slot is free again
        assert after.status_code == 200


def test_stopping_turns_away_the_queue_and_newcomers_but_finishes_what_runs(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=2) as (client, service, gated, pool):
        running = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="runs"))
        assert gated.entered.wait(30)
        queued = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="waits"))
        wait_for(lambda: service.admission.waiting == 1)
        service.stop_soon()  # what SIGTERM does first
        assert queued.result().status_code == 503
        late = client.post("/v1/img2img", **multipart(picture))
        assert late.status_code == 503 and "shutting down" in late.json()["detail"]
        assert client.get("/v1/health").json() == {"status": "stopping"}
        gated.release.set()
        assert running.result().status_code == 200
        assert gated.prompts == ["runs"]


def test_queued_requests_of_one_shape_run_as_one_batch_each_as_if_alone(pipe, picture, tmp_path):
    wide = tmp_path / "wide.png"
    Image.open(picture).resize((96, 64)).save(wide)
    options = dict(workers=1, max_queue=8, max_batch=3)
    with (
        gated_server(pipe, **options) as (client, service, gated, _),
        ThreadPoolExecutor(8) as pool,
    ):
        post = functools.partial(client.post, "/v1/img2img")
        first = pool.submit(post, **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        queued = {}
        for k, (prompt, image) in enumerate([("a", picture), ("b", picture), ("wide", wide),
                                             ("c", picture), ("d", picture)]):  # fmt: skip
            queued[prompt] = pool.submit(post, **multipart(image, prompt=prompt, seed=str(k)))
            wait_for(lambda k=k: service.admission.waiting == k + 1)
        gated.release.set()
        assert first.result().status_code == 200
        answers = {prompt: future.result() for prompt, future in queued.items()}
        # "a" got the slot and took the next two of its shape; "wide" and "d" ran after it.
        assert gated.batches[0] == ["a", "b", "c"]
        assert gated.prompts == ["first", "a", "b", "c", "wide", "d"]
        for k, (prompt, response) in enumerate(answers.items()):
            assert response.status_code == 200, response.text
            image = load_image(wide if prompt == "wide" else picture)
            expected = pipe(prompt, image, **{**CALL, "seed": k})[0]
            np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))
            assert json.loads(response.headers["x-fastimg-settings"])["fastimg:prompt"] == prompt
        batches = service.metrics.registry.get_sample_value("fastimg_batch_requests_sum")
        assert batches == 1 + 3 + 1 + 1  # first, [a, b, c], wide, d


def test_a_rider_whose_client_leaves_does_not_stop_the_batch(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=4, max_batch=4) as (client, service, gated, pool):
        gated.batch_release.clear()
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        stays = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="stays"))
        wait_for(lambda: service.admission.waiting == 1)
        leaver = raw_request(client, picture, prompt="leaver")
        wait_for(lambda: service.admission.waiting == 2)
        gated.release.set()
        assert first.result().status_code == 200
        assert gated.batch_entered.wait(30) and gated.batches == [["stays", "leaver"]]
        leaver.close()  # while the batch it rides in is held at its first step
        wait_for(lambda: count(service, "disconnected") == 1)
        gated.batch_release.set()
        response = stays.result()
        assert response.status_code == 200
        expected = pipe("stays", load_image(picture), **CALL)[0]
        np.testing.assert_array_equal(decoded(response.content), np.asarray(expected))


def test_batching_is_on_by_default_only_where_it_was_measured_to_pay(pipe):
    class OnOpenVINO(Gated):
        backend = "openvino"

    for options, loaded, expected in ((ServeOptions(), lambda: OnOpenVINO(pipe), 4),
                                      (ServeOptions(), lambda: pipe, 1),  # ONNX Runtime
                                      (ServeOptions(max_batch=2), lambda: pipe, 2)):  # fmt: skip
        with live(options, loaded) as (client, service):
            ready(client)
            assert service.max_batch == expected


def test_batching_is_off_with_max_batch_1(pipe, picture):
    with gated_server(pipe, workers=1, max_queue=4, max_batch=1) as (client, service, gated, pool):
        first = pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt="first"))
        assert gated.entered.wait(30)
        rest = []
        for k, prompt in enumerate("ab"):
            rest.append(
                pool.submit(client.post, "/v1/img2img", **multipart(picture, prompt=prompt))
            )
            wait_for(lambda k=k: service.admission.waiting == k + 1)
        gated.release.set()
        assert [f.result().status_code for f in (first, *rest)] == [200] * 3
        assert gated.batches == [] and gated.prompts == ["first", "a", "b"]


# --- what the routes and the stream ask of it ----------------------------------------------------


def test_unavailable_reason_says_why_nothing_is_admitted(pipe):
    service = Service(ServeOptions(), load=lambda: pipe)
    assert not service.accepting and "still loading" in service.unavailable_reason()
    service.state, service.error = "failed", "no engines here"
    assert service.unavailable_reason() == "the engines could not be loaded: no engines here"
    service.state = "ready"
    assert service.accepting
    service.stop()
    assert not service.accepting and "shutting down" in service.unavailable_reason()


def test_image_size_reads_the_header_and_names_the_upload(pipe, picture):
    service = Service(ServeOptions(max_pixels=64 * 64), load=lambda: pipe)
    service.pipe = pipe
    request = service.check_request(Body({"prompt": "a cat"}, picture.read_bytes(), "in.png"))
    small = Service(ServeOptions(), load=lambda: pipe)
    assert small.image_size(request) == (90, 68)
    with pytest.raises(TooLarge, match="over the limit"):
        service.image_size(request)
    text = service.check_request(Body({"prompt": "a cat"}, b"just text", "notes.png"))
    with pytest.raises(InputError, match="^notes.png is not an image format"):
        service.image_size(text)
