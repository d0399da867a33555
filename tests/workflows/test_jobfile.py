import json
from dataclasses import dataclass

import pytest

from fastimg import settings
from fastimg.errors import InputError
from fastimg.workflows import jobfile
from fastimg.workflows.jobfile import read_job_file


@pytest.fixture
def images(tmp_path, photo):
    for name in ("a.png", "b.jpg"):
        photo.save(tmp_path / name)
    return tmp_path


def test_a_csv_job_file_gives_one_job_per_row_with_defaults_filling_gaps(images):
    jobs_csv = images / "jobs.csv"
    jobs_csv.write_text(
        "image,prompt,strength,seed,sampler,output\n"
        'a.png,"a fox, in snow",0.3,7,euler_a,\n'
        "\n"
        "b.jpg,,,,,cats/b-final.webp\n",
        encoding="utf-8",
    )
    a, b = read_job_file(jobs_csv, {"prompt": "a cat", "steps": 20, "seed": None})
    assert (a.source.path, a.call.prompt, a.call.strength, a.call.seed, a.call.scheduler) == (
        images / "a.png", "a fox, in snow", 0.3, 7, "euler_a"
    )  # fmt: skip
    assert (a.call.num_inference_steps, a.call.guidance_scale, a.row, a.name) == (20, 7.5, 1, None)
    assert (b.call.prompt, b.call.strength, b.call.seed, b.row) == ("a cat", 0.8, None, 2)
    assert b.name == "cats/b-final.webp"


def test_a_jsonl_job_file_takes_numbers_or_text(images):
    jobs_jsonl = images / "jobs.jsonl"
    rows = [{"image": "a.png", "prompt": "x", "steps": 30, "guidance": "4"},
            {"image": str(images / "b.jpg"), "prompt": "y", "negative_prompt": "blur"}]  # fmt: skip
    jobs_jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    a, b = read_job_file(jobs_jsonl)
    assert (a.call.num_inference_steps, a.call.guidance_scale, b.call.negative_prompt) == (
        30, 4.0, "blur"
    )  # fmt: skip


def test_every_bad_row_is_named_with_its_reason_before_any_work(images):
    jobs_csv = images / "jobs.csv"
    jobs_csv.write_text(
        "image,prompt,strength,steps,seed,sampler,output\n"
        "a.png,ok,0.5,20,1,ddim,\n"
        "missing.png,x,0.5,20,1,,\n"
        "a.png,x,1.5,20,1,,\n"
        "a.png,x,0.5,2.5,1,,\n"
        "a.png,x,0.5,20,-1,,\n"
        "a.png,x,0.5,20,1,pndm,\n"
        "a.png,x,0.5,20,1,,../../etc/passwd\n"
        "jobs.csv,x,0.5,20,1,,\n"
    )
    with pytest.raises(InputError) as caught:
        read_job_file(jobs_csv)
    message = str(caught.value)
    assert "7 bad row(s); nothing was run" in message
    for expected in (
        "row 2 (line 3): image", "missing.png does not exist",
        "row 3 (line 4): Invalid value for 'strength': 1.5 is not in the range 0<x<=1.",
        "row 4 (line 5): Invalid value for 'steps': '2.5' is not a valid integer.",
        "row 5 (line 6): Invalid value for 'seed': -1 is not in the range",
        "row 6 (line 7): Invalid value for 'sampler': 'pndm' is not one of",
        "row 7 (line 8): output '../../etc/passwd' must be a name inside -o",
        "row 8 (line 9):", "jobs.csv is not an image",
    ):  # fmt: skip
        assert expected in message


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("jobs.csv", "image,prompt,colour\na.png,x,red\n", "unknown column(s) 'colour'"),
        ("jobs.csv", "prompt\nx\n", "no 'image' column"),
        ("jobs.csv", "image,prompt\n", "has no jobs"),
        ("jobs.csv", "image,prompt\na.png,x,extra\n", "3 values for 2 columns"),
        ("jobs.jsonl", '{"image": "a.png"\n', "line 1 is not valid JSON"),
        ("jobs.jsonl", '["a.png"]\n', "line 1 is not a JSON object"),
        ("jobs.jsonl", '{"image": "a.png", "prompt": 3}\n', "'prompt': 3 is not text"),
        ("jobs.jsonl", '{"image": "a.png"}\n', "no prompt (give the row one, or pass --prompt"),
        ("jobs.txt", "a.png\n", "must be a .csv (with a header row) or a .jsonl file"),
        (
            "jobs.jsonl",
            '{"image": "a.png", "prompt": "x", "seed": 1' + "0" * 400 + "}\n",
            "Invalid value for 'seed': 1000",
        ),  # fmt: skip
    ],
)
def test_malformed_job_files_are_refused_with_the_reason(images, name, content, message):
    (images / name).write_text(content)
    with pytest.raises(InputError) as caught:
        read_job_file(images / name)
    assert message in str(caught.value)


def test_a_job_file_that_is_not_utf8_or_missing_is_refused(images):
    (images / "jobs.csv").write_bytes(b"image,prompt\na.png,caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_job_file(images / "jobs.csv")
    with pytest.raises(InputError, match="does not exist"):
        read_job_file(images / "none.csv")


def test_a_byte_order_mark_from_a_spreadsheet_is_accepted(images):
    (images / "jobs.csv").write_bytes("image,prompt\na.png,x\n".encode("utf-8-sig"))
    (job,) = read_job_file(images / "jobs.csv")
    assert job.call.prompt == "x"


def test_the_columns_are_the_image_every_settings_key_and_the_output():
    keys = [setting.key for setting in settings.SETTINGS]
    assert jobfile.columns() == ("image", *keys, "control_image", "mask", "mask_invert",
                                 "keep_unmasked", "output")  # fmt: skip
    assert {"steps", "guidance", "num_images", "sampler", "prompt_2"} <= set(keys)


def test_a_setting_added_to_settings_is_a_job_file_column_parsed_by_the_setting(
    images, monkeypatch
):
    @dataclass(frozen=True)
    class WithEta(settings.CallSettings):
        eta: float = 0.0

    eta = settings.Setting("eta", settings.REAL, "DDIM's eta.", default=0.0, low=0, high=1)
    monkeypatch.setattr(settings, "SETTINGS", (*settings.SETTINGS, eta))
    monkeypatch.setitem(settings.BY_KEY, "eta", eta)
    monkeypatch.setitem(settings.BY_NAME, "eta", eta)
    monkeypatch.setattr(settings, "CallSettings", WithEta)
    (images / "jobs.csv").write_text("image,prompt,eta\na.png,x,0.25\na.png,x,\n")
    first, second = read_job_file(images / "jobs.csv")
    assert (first.call.eta, second.call.eta, first.call.prompt) == (0.25, 0.0, "x")
    assert "eta" in jobfile.columns()
    (images / "jobs.csv").write_text("image,prompt,eta\na.png,x,2\n")
    with pytest.raises(InputError) as caught:
        read_job_file(images / "jobs.csv")
    assert "row 1 (line 2): Invalid value for 'eta': 2.0 is not in the range 0<=x<=1." in str(
        caught.value
    )


def test_sdxl_and_image_count_columns_are_read_as_the_settings_take_them(images):
    (images / "jobs.jsonl").write_text(
        json.dumps({"image": "a.png", "prompt": "x", "num_images": 2, "prompt_2": "y",
                    "original_size": [1024, 768], "target_size": "512x512"}) + "\n"
    )  # fmt: skip
    (job,) = read_job_file(images / "jobs.jsonl")
    assert job.call.num_images_per_prompt == 2
    assert dict(job.call.sdxl) == {
        "prompt_2": "y", "original_size": (1024, 768), "target_size": (512, 512)
    }  # fmt: skip


def test_control_image_and_preprocess_columns(images):
    (images / "edges").mkdir()
    (images / "a.png").rename(images / "edges" / "c.png")
    jobs_csv = images / "jobs.csv"
    jobs_csv.write_text(
        "image,prompt,control_image,control_preprocess,control_scale\n"
        "b.jpg,x,edges/c.png,canny,0.5\n"
        "b.jpg,y,,scribble,\n"
        "b.jpg,z,,,\n"
    )
    a, b, c = read_job_file(jobs_csv)
    assert (a.call.control_image, a.call.control_preprocess) == (
        str(images / "edges" / "c.png"), "canny"
    )  # fmt: skip
    assert a.call.controlnet_conditioning_scale == 0.5
    assert (b.call.control_image, b.call.control_preprocess) == (None, "scribble")
    assert (c.call.control_image, c.call.control_preprocess) == (None, None)


def test_bad_control_cells_are_named(images):
    jobs_jsonl = images / "jobs.jsonl"
    rows = [{"image": "a.png", "prompt": "x", "control_image": "gone.png"},
            {"image": "a.png", "prompt": "x", "control_image": 3},
            {"image": "a.png", "prompt": "x", "control_image": "jobs.jsonl"},
            {"image": "a.png", "prompt": "x", "control_preprocess": "blur"}]  # fmt: skip
    jobs_jsonl.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(InputError) as caught:
        read_job_file(jobs_jsonl)
    message = str(caught.value)
    assert "4 bad row(s)" in message
    gone = images / "gone.png"
    assert f"row 1 (line 1): control_image (the ControlNet's image) {gone} does not" in message
    assert "row 2 (line 2): control_image must be text, got 3" in message
    assert "row 3 (line 3): " in message and "jobs.jsonl is not an image" in message
    assert "row 4 (line 4): Invalid value for 'control_preprocess': 'blur' is not" in message


def test_mask_columns(images):
    """mask is a path as image is; mask_blur and mask_padding are settings; mask_invert and
    keep_unmasked are true or false (JSON's booleans, or words in a CSV)."""
    (images / "masks").mkdir()
    (images / "a.png").rename(images / "masks" / "m.png")
    jobs_csv = images / "jobs.csv"
    jobs_csv.write_text(
        "image,prompt,mask,mask_invert,keep_unmasked,mask_blur,mask_padding\n"
        "b.jpg,x,masks/m.png,true,No,4,16\n"
        "b.jpg,y,masks/m.png,,,,\n"
        "b.jpg,z,,,,,\n"
    )
    a, b, c = read_job_file(jobs_csv)
    mask = str(images / "masks" / "m.png")
    assert (a.call.mask_image, a.call.mask_invert, a.call.keep_unmasked) == (mask, True, False)
    assert (a.call.mask_blur, a.call.padding_mask_crop) == (4, 16)
    assert (b.call.mask_image, b.call.mask_invert, b.call.padding_mask_crop) == (mask, False, None)
    assert (c.call.mask_image, c.call.mask_blur) == (None, None)
    jobs_jsonl = images / "jobs.jsonl"
    row = {"image": "b.jpg", "prompt": "x", "mask": "masks/m.png"}
    rows = [{**row, "keep_unmasked": True}, {**row, "mask": "gone.png"},
            {**row, "mask_invert": "maybe"}, {**row, "mask_blur": "soft"}]  # fmt: skip
    jobs_jsonl.write_text("\n".join(json.dumps(row) for row in rows[:1]))
    (job,) = read_job_file(jobs_jsonl)
    assert job.call.keep_unmasked is True
    jobs_jsonl.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(InputError) as caught:
        read_job_file(jobs_jsonl)
    message = str(caught.value)
    assert "3 bad row(s)" in message
    gone = images / "gone.png"
    assert f"row 2 (line 2): mask (white repaints, black keeps) {gone} does not" in message
    assert "row 3 (line 3): mask_invert must be true or false, got 'maybe'" in message
    assert (
        "row 4 (line 4): Invalid value for 'mask_blur': 'soft' is not a valid integer." in message
    )


def test_several_controlnets_take_a_list_per_cell(images):
    """control_image and the control settings: one value per ControlNet, `;` between them in a
    CSV cell, a JSON list in a JSONL row."""
    jobs_csv = images / "jobs.csv"
    jobs_csv.write_text(
        "image,prompt,control_image,control_preprocess,control_scale,control_end\n"
        "b.jpg,x,a.png; b.jpg,none;scribble,1.0;0.5,0.6\n"
        "b.jpg,y,,canny;scribble,,\n"
    )
    a, b = read_job_file(jobs_csv)
    assert a.call.control_image == (str(images / "a.png"), str(images / "b.jpg"))
    assert a.call.control_preprocess == (None, "scribble")
    assert a.call.controlnet_conditioning_scale == (1.0, 0.5)
    assert a.call.control_guidance_end == 0.6  # one value for both
    assert (b.call.control_image, b.call.control_preprocess) == (None, ("canny", "scribble"))
    jobs_jsonl = images / "jobs.jsonl"
    row = {"image": "a.png", "prompt": "x", "control_image": ["a.png", "b.jpg"],
           "control_scale": [1, 0.25], "control_start": "0;0.5"}  # fmt: skip
    jobs_jsonl.write_text(json.dumps(row))
    (job,) = read_job_file(jobs_jsonl)
    assert job.call.control_image == (str(images / "a.png"), str(images / "b.jpg"))
    assert job.call.controlnet_conditioning_scale == (1.0, 0.25)
    assert job.call.control_guidance_start == (0.0, 0.5)


def test_bad_control_lists_are_named(images):
    jobs_jsonl = images / "jobs.jsonl"
    rows = [{"image": "a.png", "prompt": "x", "control_image": "a.png;"},
            {"image": "a.png", "prompt": "x", "control_image": ["a.png", "gone.png"]},
            {"image": "a.png", "prompt": "x", "control_image": []},
            {"image": "a.png", "prompt": "x", "control_scale": "1;;2"}]  # fmt: skip
    jobs_jsonl.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(InputError) as caught:
        read_job_file(jobs_jsonl)
    message = str(caught.value)
    assert "4 bad row(s)" in message
    assert "row 1 (line 1): control_image 'a.png;' must be a path, or one path per" in message
    gone = images / "gone.png"
    assert f"row 2 (line 2): control_image (the ControlNet's image) {gone} does not" in message
    assert "row 3 (line 3): control_image [] must be a path" in message
    assert "row 4 (line 4): Invalid value for 'control_scale': '1;;2' has an empty value" in message
