"""The engines a pipeline runs on, as the pipeline asks for them."""

import logging

import pytest

from fastimg.diffusion.pipeline import Img2ImgPipeline


@pytest.fixture
def warnings(caplog):
    """The fastimg logger's records (the CLI's logging setup may stop it propagating to the
    root logger, where caplog listens; where it propagates, each record is caught twice)."""
    logger = logging.getLogger("fastimg")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("shapes", ["static", "auto"])
def test_shapes_a_backend_cannot_compile_are_named_not_quietly_ignored(tiny, warnings, shapes):
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime", shapes=shapes)
    assert pipe.backend == "onnxruntime"
    said = {r.getMessage() for r in warnings.records if r.levelno == logging.WARNING}
    assert said == {
        f"shapes {shapes!r} does nothing on onnxruntime, which runs every shape on one compiled "
        "graph (onnxruntime-cuda and openvino compile each call's exact shapes)"
    }


def test_shapes_a_backend_compiles_raise_no_warning(tiny, warnings):
    pytest.importorskip("openvino")
    Img2ImgPipeline.from_engines(tiny[1], backend="openvino", precision="fp32", shapes="static")
    Img2ImgPipeline.from_engines(tiny[1], backend="onnxruntime")
    assert not [r for r in warnings.records if "does nothing" in r.getMessage()]


@pytest.mark.parametrize(
    ("backend", "resolved"), [("openvino", "static"), ("onnxruntime", "dynamic")]
)
def test_no_shapes_asked_is_the_backends_choice_for_one_image_size(tiny, warnings, backend,
                                                                    resolved):  # fmt: skip
    pytest.importorskip("openvino")
    pipe = Img2ImgPipeline.from_engines(tiny[1], backend=backend, precision="fp32", shapes=None)
    assert pipe.engines.shapes == resolved
    unet = pipe.engines.primary().sessions["unet"].session
    assert getattr(unet, "shapes", "dynamic") == resolved
    assert not [r for r in warnings.records if r.levelno >= logging.WARNING]
