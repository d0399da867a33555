"""A prompt changed while a stream runs: a text file, re-read at each frame boundary when it
changes, handed to StreamEngine.update() (the prompt encoded once; nothing reloads)."""

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import FastImgError, InputError

MAX_PROMPT_BYTES = 64 * 1024  # a prompt file larger than this is no prompt


class PromptFile:
    """The prompt in a text file (UTF-8, surrounding whitespace stripped), noticed when the
    file's size, time or inode changes (an editor that replaces the file is seen too)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp = None

    def read(self) -> str:
        """The prompt in the file now; InputError naming the file when it has none."""
        try:
            stat = os.stat(self.path)
            if stat.st_size > MAX_PROMPT_BYTES:
                raise InputError(f"--prompt-file {self.path} is {stat.st_size} bytes, over "
                                 f"{MAX_PROMPT_BYTES}: a prompt file holds one prompt")  # fmt: skip
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            why = exc.strerror or exc
            raise InputError(f"--prompt-file {self.path} cannot be read ({why}): give a "
                             "readable text file") from None  # fmt: skip
        except UnicodeDecodeError:
            raise InputError(
                f"--prompt-file {self.path} is not UTF-8 text: save it as UTF-8"
            ) from None
        if not text:
            raise InputError(f"--prompt-file {self.path} is empty: write the prompt in it")
        self._stamp = _stamp(stat)
        return text

    def changed(self) -> bool:
        """Whether the file changed since it was last read (a missing file has not)."""
        try:
            return _stamp(os.stat(self.path)) != self._stamp
        except OSError:
            return False  # (being replaced: read at a later frame)


def _stamp(stat: os.stat_result) -> tuple:
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class LivePrompt:
    """A StreamEngine whose prompt follows a PromptFile: before each frame, a changed file's
    prompt is applied with update(); one that cannot be used is reported and the prompt
    stays."""

    def __init__(self, engine, prompt_file: PromptFile, report: Callable[[str], None]):
        self.engine, self.prompt_file, self.report = engine, prompt_file, report

    @property
    def settings(self):
        """The wrapped engine's settings."""
        return self.engine.settings

    def push(self, image, tag):
        """Apply a changed prompt, then push the frame (StreamEngine.push)."""
        if self.prompt_file.changed():
            self._follow()
        return self.engine.push(image, tag)

    def flush(self) -> list:
        """The wrapped engine's flush()."""
        return self.engine.flush()

    def _follow(self) -> None:
        try:
            prompt = self.prompt_file.read()
            if prompt != self.engine.settings.prompt:
                self.engine.update(prompt=prompt)
                self.report(f"prompt: {prompt!r} from this frame on")
        except FastImgError as exc:
            self.report(f"{exc}; the prompt stays {self.engine.settings.prompt!r}")
