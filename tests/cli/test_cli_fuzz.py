"""Property-based fuzzing of transform's argument handling through click's CliRunner.

Any mix of valid and invalid option values ends in exit code 0 (and the images written), 1
(a domain error with a message) or 2 (a usage error): never a traceback, never files left
behind by a failed run.
"""

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastimg.cli import cli

NUMBERISH = ["-1", "0", "nan", "inf", "-inf", "1e309", "abc", "", " ", "0x10", "2.5", "1_0"]
OPTIONS = {
    "--strength": st.sampled_from(["0.5", "1", "0.01", "1.0001", *NUMBERISH]),
    "--steps": st.sampled_from(["1", "2", "3", "1001", "100000", *NUMBERISH]),
    "--guidance": st.sampled_from(["0", "1", "7.5", "1e6", *NUMBERISH]),
    "--seed": st.sampled_from(["0", "42", "4294967295", "4294967296", *NUMBERISH]),
    "--num-images": st.sampled_from(["1", "2", "65", *NUMBERISH]),
    "--size": st.sampled_from(["16", "32x24", "24x32", "8x8", "20000", "12x", "x", *NUMBERISH]),
    "--scheduler": st.sampled_from(["ddim", "euler_a", "lcm", "pndm", "", "DDIM"]),
    "--max-pixels": st.sampled_from(["1", "100", "100000000", *NUMBERISH]),
    "--negative-prompt": st.text(max_size=30),
    "--precision": st.sampled_from(["auto", "fp32", "fp16", ""]),
}


@st.composite
def argument_lists(draw) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(OPTIONS)), unique=True, max_size=6))
    args = []
    for option in chosen:
        args += [option, draw(OPTIONS[option])]
    if draw(st.booleans()):
        args.insert(draw(st.integers(0, len(args))), draw(st.sampled_from(["--bogus", "-x", "--"])))
    return args


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "in.png"
    Image.new("RGB", (40, 32), (200, 120, 40)).save(path)
    return path


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=argument_lists(), prompt=st.text(max_size=40))
def test_any_arguments_end_in_a_clean_exit(tiny, picture, tmp_path_factory, args, prompt):
    out = tmp_path_factory.mktemp("out")
    base = ["transform", str(picture), "--engines", str(tiny[1]), "--prompt", prompt]
    result = CliRunner().invoke(cli, [*base, "--backend", "onnxruntime", *args, "-o", str(out)])
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        repr(result.exception),
    )
    assert "Traceback" not in result.output
    written = sorted(p.name for p in out.iterdir())
    assert all(not name.startswith(".") for name in written)  # no temporary files left
    if result.exit_code == 0:
        assert written and all(name.endswith(".png") for name in written)
    else:
        assert result.output.strip()
