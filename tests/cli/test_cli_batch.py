import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastimg.cli import cli


def _transform(runner, engines, *args):
    return runner.invoke(
        cli,
        ["transform", *map(str, args), "--engines", str(engines), "--prompt", "a red fox",
         "--steps", "4", "--guidance", "3"],
    )  # fmt: skip


def test_a_strength_sweep_names_each_output_apart_and_a_rerun_is_refused(
    runner, tiny, picture, tmp_path
):
    out = tmp_path / "out"
    args = (picture, "-o", out, "--strength", "0.25,0.5,0.75", "--seed", "42")
    result = _transform(runner, tiny[1], *args)
    assert result.exit_code == 0, result.output
    names = ["in-s0.25-42.png", "in-s0.5-42.png", "in-s0.75-42.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert result.stdout.split() == [str(out / name) for name in names]
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}

    again = _transform(runner, tiny[1], *args)
    assert again.exit_code == 2 and "already exists (and 2 more)" in again.output
    assert "--skip-existing" in again.output
    resumed = _transform(runner, tiny[1], *args, "--skip-existing")
    assert resumed.exit_code == 0 and "kept 3 output(s)" in resumed.output
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing redone


def test_a_sweep_gives_what_single_runs_give(runner, tiny, picture, tmp_path):
    swept = _transform(runner, tiny[1], picture, "-o", tmp_path / "sweep", "--strength",
                       "0.5,0.75", "--seed", "3")  # fmt: skip
    single = _transform(runner, tiny[1], picture, "-o", tmp_path / "one.png", "--strength",
                        "0.75", "--seed", "3")  # fmt: skip
    assert swept.exit_code == 0 and single.exit_code == 0, swept.output + single.output
    a = np.asarray(Image.open(tmp_path / "sweep" / "in-s0.75-3.png"))
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "one.png")))


def test_variants_count_seeds_on_and_a_grid_shows_them(runner, tiny, picture, tmp_path):
    out = tmp_path / "out"
    result = _transform(runner, tiny[1], picture, "-o", out, "--strength", "0.5,0.75",
                        "--variants", "2", "--seed", "10", "--grid")  # fmt: skip
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["in-grid.png", "in-s0.5-10.png", "in-s0.5-11.png", "in-s0.75-10.png",
                     "in-s0.75-11.png"]  # fmt: skip
    sheet = Image.open(out / "in-grid.png")
    assert sheet.width > 2 * 64 and sheet.height > 2 * 64
    assert "fastimg:sheet" in sheet.text


@pytest.mark.parametrize(
    "args,message",
    [
        (["--prompt", "another"], "--prompt was given 2 times"),
        (["--strength", "0.5,,0.7"], "has an empty value"),
        (["--strength", "0.5,2"], "0<x<=1"),
        (["--variants", "2", "--seed", "1,2"], "--variants takes one --seed"),
        (["--name", "{stem}-{colour}"], "unknown field {colour}"),
        (["--name", "{stem}", "--seed", "1,2"], "two outputs would be written to"),
        (["--skip-existing"], "--skip-existing needs --seed"),
        (["--grid", "--seed", "1"], "--grid writes a contact sheet beside the outputs"),
    ],
)
def test_plans_that_cannot_work_are_refused_before_anything_loads(
    runner, tiny, picture, tmp_path, args, message
):
    out = tmp_path / ("o.png" if "--grid" in args else "o")
    result = _transform(runner, tiny[1], picture, "-o", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_a_folder_input_mirrors_its_subfolders(runner, tiny, photo, tmp_path):
    for relative in ("in/a.png", "in/sub/a.png", "in/readme.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    photo.save(tmp_path / "in" / "a.png")
    photo.save(tmp_path / "in" / "sub" / "a.png")
    (tmp_path / "in" / "readme.txt").write_text("hello")
    result = _transform(runner, tiny[1], tmp_path / "in", "-o", tmp_path / "out", "--seed",
                        "1", "-r", "--strength", "0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a-s0.5-1.png").is_file()
    assert (tmp_path / "out" / "sub" / "a-s0.5-1.png").is_file()
    assert "skipped 1 file(s)" in result.output


def test_progress_is_one_line_per_image_when_not_a_terminal(runner, tiny, picture, tmp_path):
    result = _transform(runner, tiny[1], picture, "-o", tmp_path / "o", "--seed", "1,2",
                        "--strength", "0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/2]", "[2/2]"]
    quiet = _transform(runner, tiny[1], picture, "-o", tmp_path / "q", "--seed", "1",
                       "--strength", "0.5", "-q")  # fmt: skip
    assert quiet.exit_code == 0 and "[1/1]" not in quiet.stderr


def test_jpeg_and_webp_outputs_carry_the_labels_and_inspect_reads_them(
    runner, tiny, picture, tmp_path
):
    for fmt in ("jpeg", "webp"):
        result = _transform(runner, tiny[1], picture, "-o", tmp_path / fmt, "--seed", "5",
                            "--strength", "0.5", "--format", fmt, "--quality", "80")  # fmt: skip
        assert result.exit_code == 0, result.output
    (jpeg,) = (tmp_path / "jpeg").iterdir()
    (webp,) = (tmp_path / "webp").iterdir()
    assert jpeg.name == "in-s0.5-5.jpg" and Image.open(jpeg).format == "JPEG"
    assert webp.name == "in-s0.5-5.webp" and Image.open(webp).format == "WEBP"
    shown = runner.invoke(cli, ["inspect", str(jpeg), str(webp)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("trainedAlgorithmicMedia") == 2
    assert "a red fox" in shown.output and "Seed: 5" in shown.output
    as_json = runner.invoke(cli, ["inspect", "--json", str(jpeg)])
    record = json.loads(as_json.stdout)
    assert record["fastimg"]["fastimg:seed"] in ("5", 5)


def test_no_metadata_leaves_no_prompt_in_the_file(runner, tiny, picture, tmp_path):
    result = _transform(runner, tiny[1], picture, "-o", tmp_path / "o.png", "--seed", "5",
                        "--strength", "0.5", "--no-metadata")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert b"red fox" not in (tmp_path / "o.png").read_bytes()
    shown = runner.invoke(cli, ["inspect", str(tmp_path / "o.png")])
    assert "parameters: none" in shown.output and "label (IPTC digital source type): none" in (
        shown.output
    )


def test_an_output_format_that_cannot_carry_labels_is_refused(runner, tiny, picture, tmp_path):
    result = _transform(runner, tiny[1], picture, "-o", tmp_path / "x.bmp", "--seed", "1")
    assert result.exit_code == 2 and "PNG (.png), JPEG" in result.output
    assert not (tmp_path / "x.bmp").exists()
    clash = _transform(runner, tiny[1], picture, "-o", tmp_path / "x.png", "--format", "webp")
    assert clash.exit_code == 2 and "--format says webp" in clash.output


def test_run_takes_a_job_file_and_refuses_a_bad_one_before_any_work(runner, tiny, photo, tmp_path):
    photo.save(tmp_path / "a.png")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,prompt,strength,seed,output\na.png,a fox,0.5,1,\n"
                    "a.png,a cat,0.75,2,cat.jpg\n")  # fmt: skip
    args = ["--engines", str(tiny[1]), "--steps", "4", "--guidance", "3", "-o"]
    result = runner.invoke(cli, ["run", str(jobs), *args, str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1-a-s0.5-1.png", "cat.jpg"]
    cat = Image.open(tmp_path / "out" / "cat.jpg")
    comment = cat.getexif().get_ifd(0x8769)[0x9286]  # EXIF UserComment, where A1111 reads
    assert comment[8:].decode("utf-16-be").startswith("a cat\nSteps: 4")

    jobs.write_text("image,prompt,strength\na.png,a fox,0.5\na.png,a cat,7\n")
    bad = runner.invoke(cli, ["run", str(jobs), *args, str(tmp_path / "bad")])
    assert (
        bad.exit_code == 1
        and "row 2 (line 3): Invalid value for 'strength': 7.0 is not in the range 0<x<=1."
        in bad.output
    )
    assert not (tmp_path / "bad").exists()


def test_c2pa_credentials_are_signed_and_verified_by_c2pas_reader(runner, tiny, picture, tmp_path):
    pytest.importorskip("c2pa")
    from fastimg.media.c2pa import read_manifest
    from tests.pki import make_pki

    pki = make_pki(tmp_path)
    out = tmp_path / "out"
    result = _transform(runner, tiny[1], picture, "-o", out, "--seed", "1,2", "--strength",
                        "0.5", "--format", "jpeg", "--c2pa-cert", pki.chain, "--c2pa-key",
                        pki.key)  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        manifest = read_manifest(path, trust_anchors=pki.ca)
        assert manifest["validation_state"] == "Trusted" and manifest["failures"] == []
        assert manifest["digital_source_type"].endswith("/trainedAlgorithmicMedia")
    shown = runner.invoke(cli, ["inspect", str(out / "in-s0.5-1.jpg")])
    assert "C2PA manifest: Valid, signed by fastimg test signer" in shown.output
    assert "Seed: 1" in shown.output  # the other labels are still there


def test_a_c2pa_key_that_does_not_match_is_refused_before_any_work(runner, tiny, picture, tmp_path):
    pytest.importorskip("c2pa")
    from tests.pki import make_pki

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    mine, other = make_pki(tmp_path / "a"), make_pki(tmp_path / "b")
    out = tmp_path / "out"
    result = _transform(runner, tiny[1], picture, "-o", out, "--seed", "1", "--c2pa-cert",
                        mine.chain, "--c2pa-key", other.key)  # fmt: skip
    assert result.exit_code == 1 and "does not match the certificate" in result.output
    assert not out.exists()
    half = _transform(runner, tiny[1], picture, "-o", out, "--seed", "1", "--c2pa-cert",
                      mine.chain)  # fmt: skip
    assert half.exit_code == 2 and "--c2pa-cert needs --c2pa-key too" in half.output


def test_a_grid_is_drawn_again_from_kept_jpegs_and_a_failed_input_gets_no_sheet(
    runner, tiny, picture, tmp_path
):
    args = (picture, "-o", tmp_path / "g", "--strength", "0.5,1", "--seed", "1", "--grid",
            "--format", "jpeg")  # fmt: skip
    assert _transform(runner, tiny[1], *args).exit_code == 0
    (tmp_path / "g" / "in-grid.png").unlink()
    again = _transform(runner, tiny[1], *args, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert "Seed: 1" in runner.invoke(cli, ["inspect", str(tmp_path / "g" / "in-grid.png")]).output

    (tmp_path / "bad.png").write_text("not an image")
    bad = _transform(runner, tiny[1], tmp_path / "bad.png", "-o", tmp_path / "b", "--strength",
                     "0.5,1", "--seed", "1", "--grid")  # fmt: skip
    assert bad.exit_code == 1 and "2 of 2 images failed" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "b" / "bad-grid.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--variants", "65", "--grid"], "more than 64"),
        (["--name", "{seed[0]}"], "unknown field {seed[0]}"),
        (["--name", "{stem.upper}"], "unknown field {stem.upper}"),
        (["--name", "{stem:.0}"], "must name a file inside -o"),
        (["--name", "{stem:/>12}"], "must name a file inside -o"),
        (["--name", "{stem}.tif"], "TIF, which cannot carry the labels"),
        (["--name", "{stem}.jpg", "--format", "webp"], "is JPEG, but --format says webp"),
        (["--variants", "2", "--skip-existing"], "--skip-existing needs --seed"),
        (["--no-metadata", "--c2pa-cert", "c.pem", "--c2pa-key", "k.pem"], "pass one or the"),
    ],
)
def test_more_plans_that_cannot_work_are_refused_before_any_work(
    runner, tiny, picture, tmp_path, args, message
):
    seed = [] if "--skip-existing" in args else ["--seed", "1"]
    result = _transform(runner, tiny[1], picture, "-o", tmp_path / "o", *seed, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists() and not Path("/in.png").exists()


def test_skip_existing_does_not_take_an_output_made_with_other_settings(
    runner, tiny, picture, tmp_path
):
    out = tmp_path / "o"
    first = _transform(runner, tiny[1], picture, "-o", out, "--seed", "1", "--strength", "0.5")
    assert first.exit_code == 0
    (made,) = out.iterdir()
    before = made.read_bytes()
    args = ["transform", str(picture), "--engines", str(tiny[1]), "--prompt", "a cat", "--steps",
            "4", "--guidance", "3", "--seed", "1", "--strength", "0.5", "-o", str(out)]  # fmt: skip
    other = runner.invoke(cli, [*args, "--skip-existing"])
    assert other.exit_code == 1
    assert "was made with prompt 'a red fox', not 'a cat'" in other.output
    assert made.read_bytes() == before


def test_an_output_folder_inside_the_input_folder_is_not_taken_as_input(
    runner, tiny, photo, tmp_path
):
    (tmp_path / "photos").mkdir()
    photo.save(tmp_path / "photos" / "a.png")
    args = (tmp_path / "photos", "-r", "-o", tmp_path / "photos" / "out", "--seed", "1",
            "--strength", "0.5")  # fmt: skip
    assert _transform(runner, tiny[1], *args).exit_code == 0
    resumed = _transform(runner, tiny[1], *args, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert "kept 1 output(s)" in resumed.output
