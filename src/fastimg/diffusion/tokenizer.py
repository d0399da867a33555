"""Prompt tokenization through the `tokenizers` library, as diffusers pads and truncates."""

import logging

import numpy as np

from ..engine_folder.manifest import Manifest
from ..errors import EngineError, ManifestError
from ..settings import quote

log = logging.getLogger("fastimg")


class PromptTokenizer:
    """CLIP tokenizer from an engine folder: ids padded and truncated to max_length.

    The tokenizer file is untrusted like the rest of the folder: it must parse, its pad id
    must be in its vocabulary, and its ids must fit the text encoder's embedding.
    """

    def __init__(self, manifest: Manifest, encoder: str = "text_encoder"):
        from tokenizers import Tokenizer

        spec = manifest.tokenizer_of(encoder)
        path = manifest.folder / spec["path"]
        fix = f"export it again with  fastimg export MODEL -o {manifest.folder}"
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exceptions on malformed files
            reason = (str(exc).splitlines() or ["malformed"])[0][:200]
            raise ManifestError(
                f"the tokenizer file {path} cannot be read ({reason}): {fix}"
            ) from None
        vocab = max(self._tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self.max_length, pad_id = int(spec["max_length"]), int(spec["pad_id"])
        if pad_id >= vocab:
            raise ManifestError(
                f"tokenizer.pad_id {pad_id} is not in the tokenizer's vocabulary (ids 0 to "
                f"{vocab - 1}): {fix}"
            )
        self.rows = manifest.components[encoder].get("vocab_size")
        if self.rows is not None and vocab > self.rows:
            raise ManifestError(
                f"the tokenizer has ids up to {vocab - 1}, but the text encoder embeds only "
                f"{self.rows} tokens: the tokenizer is not this model's; {fix}"
            )
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.enable_padding(
            length=self.max_length, pad_id=pad_id, pad_token=self._tokenizer.id_to_token(pad_id)
        )

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """int64 ids of shape [len(prompts), max_length]; warns when a prompt is cut."""
        encodings = self._tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings, strict=True):
            if encoding.overflowing:
                log.warning(
                    "prompt longer than %d tokens was truncated (as diffusers does): %s",
                    self.max_length,
                    quote(prompt),
                )
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        if self.rows is not None and ids.size and int(ids.max()) >= self.rows:
            raise EngineError(
                f"the tokenizer gave id {int(ids.max())}, beyond the text encoder's "
                f"{self.rows} tokens: the engine folder's tokenizer is not this model's"
            )
        return ids
