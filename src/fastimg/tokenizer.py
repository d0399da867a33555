"""Prompt tokenization through the `tokenizers` library, as diffusers pads and truncates."""

import logging

import numpy as np

from .manifest import Manifest

log = logging.getLogger("fastimg")


class PromptTokenizer:
    """CLIP tokenizer from an engine folder: ids padded and truncated to max_length."""

    def __init__(self, manifest: Manifest):
        from tokenizers import Tokenizer

        spec = manifest.tokenizer
        self.max_length = int(spec["max_length"])
        self._tokenizer = Tokenizer.from_file(str(manifest.folder / spec["path"]))
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.enable_padding(
            length=self.max_length,
            pad_id=int(spec["pad_id"]),
            pad_token=self._tokenizer.id_to_token(int(spec["pad_id"])),
        )

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """int64 ids of shape [len(prompts), max_length]; warns when a prompt is cut."""
        encodings = self._tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                log.warning(
                    "prompt longer than %d tokens was truncated (as diffusers does): %r",
                    self.max_length,
                    prompt,
                )
        return np.array([e.ids for e in encodings], dtype=np.int64)
