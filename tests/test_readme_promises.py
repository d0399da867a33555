"""What the README's opening promises about the exact and the fast path holds."""

from pathlib import Path

from fastimg.backends import select
from fastimg.pipeline import describe

README = Path(__file__).parents[1] / "README.md"


def test_the_opening_names_the_exact_path_and_the_fast_one():
    opening = README.read_text().split("\n## ")[0]
    assert "**The exact path**, `--precision fp32`" in opening
    assert "**The fast path**" in opening and "every run says which one it took" in opening


def test_the_default_is_fast_where_the_cpu_has_bf16_and_exact_where_it_has_not(monkeypatch):
    monkeypatch.setattr(select, "installed", lambda name: name in ("onnxruntime", "openvino"))
    monkeypatch.setattr(select, "gpu_present", lambda: False)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: True)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "bf16")
    assert "the fast path" in describe(backend, precision)
    monkeypatch.setattr(select, "cpu_supports_bf16", lambda: False)
    backend, precision = select.resolve()
    assert (backend, precision) == ("openvino", "fp32")
    assert "the exact path, matching diffusers" in describe(backend, precision)


def _commands() -> list[list[str]]:
    """Every `fastimg ...` command line in the README's bash blocks, continuations joined."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip())
                if words[:1] == ["fastimg"]:
                    commands.append(words[1:])
    return commands


def test_every_option_the_readme_shows_exists():
    from fastimg.cli import cli

    commands = _commands()
    assert len(commands) >= 10
    for words in commands:
        command = cli.commands[words[0]]
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        used = {w.split("=")[0] for w in words[1:] if w.startswith("-")}
        assert used <= known, (words, used - known)
