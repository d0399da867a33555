import os

import pytest

from fastimg.errors import InputError
from fastimg.media.images import psnr
from fastimg.stream.engine import StreamEngine, StreamSettings
from fastimg.stream.live import LivePrompt, PromptFile

from .conftest import CountingSession
from .test_engine import single


def rewrite(path, text: str) -> None:
    """Write `text`, the file's time moved on (a change however quickly it comes)."""
    before = os.stat(path).st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_changed_prompt_file_applies_at_the_next_frame_without_reloading(
    tiny_pipe, frames, tmp_path
):
    path = tmp_path / "prompt.txt"
    rewrite(path, "a stream prompt\n")
    prompt_file, said = PromptFile(path), []
    s = StreamSettings(prompt_file.read(), strength=0.5, steps=4, seed=1)
    text = CountingSession(tiny_pipe.sessions["text_encoder"])
    tiny_pipe.sessions["text_encoder"], original = text, tiny_pipe.sessions["text_encoder"]
    before = {name: id(session) for name, session in tiny_pipe.sessions.items()}
    try:
        live = LivePrompt(StreamEngine(tiny_pipe, s), prompt_file, said.append)
        first = live.push(frames[0], 0)
        same = live.push(frames[1], 1)  # the file unchanged: nothing read, nothing encoded
        rewrite(path, "  a prompt written while it runs ")
        changed = live.push(frames[2], 2)
        again = live.push(frames[3], 3)
        after = {name: id(session) for name, session in tiny_pipe.sessions.items()}
    finally:
        tiny_pipe.sessions["text_encoder"] = original
    assert text.calls == 2  # each prompt encoded once
    assert after == before  # the same engines: nothing loaded again
    assert said == ["prompt: 'a prompt written while it runs' from this frame on"]
    assert first.image.info["fastimg:prompt"] == same.image.info["fastimg:prompt"] == s.prompt
    new = StreamSettings("a prompt written while it runs", strength=0.5, steps=4, seed=1)
    assert changed.image.info["fastimg:prompt"] == new.prompt == again.image.info["fastimg:prompt"]
    assert psnr(same.image, single(tiny_pipe, frames[1], s)) >= 40
    assert psnr(changed.image, single(tiny_pipe, frames[2], new)) >= 40


def test_an_emptied_prompt_file_is_reported_and_the_prompt_stays(tiny_pipe, frames, tmp_path):
    path = tmp_path / "prompt.txt"
    rewrite(path, "a stream prompt")
    prompt_file, said = PromptFile(path), []
    live = LivePrompt(StreamEngine(tiny_pipe, StreamSettings(prompt_file.read())), prompt_file,
                      said.append)  # fmt: skip
    rewrite(path, "   \n")
    out = live.push(frames[0], 0)
    assert said == [f"--prompt-file {path} is empty: write the prompt in it; the prompt stays "
                    "'a stream prompt'"]  # fmt: skip
    assert out.image.info["fastimg:prompt"] == "a stream prompt"


@pytest.mark.parametrize(
    "content,detail",
    [(None, "cannot be read"), (b"\xff\xfe\xfa", "is not UTF-8 text"), (b"", "is empty")],
)
def test_a_prompt_file_without_a_prompt_is_refused_by_name(tmp_path, content, detail):
    path = tmp_path / "prompt.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=f"--prompt-file .*prompt.txt {detail}"):
        PromptFile(path).read()
