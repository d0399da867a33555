"""Prompts to the UNet's text inputs through the engine folder's text encoders, cached: SD's
one encoder, or SDXL's two (penultimate states concatenated, pooled from text_encoder_2)."""

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..backends import Engines
from ..engine_folder.manifest import Manifest
from .tokenizer import PromptTokenizer

PROMPT_CACHE_SIZE = 32


class PromptEncoder:
    """The text encoders' tokenizers and a small cache of encoded prompts (thread-safe)."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.tokenizers = {e: PromptTokenizer(manifest, e) for e in manifest.text_encoders}
        self.tokenizer = next(iter(self.tokenizers.values()))
        self._lock = threading.Lock()
        self.cache: OrderedDict[tuple, dict] = OrderedDict()
        # What else changes the text encoders' output (the active LoRAs): part of the key.
        self.state: Callable[[], tuple] = tuple

    def encode(
        self,
        prompt: str,
        negative_prompt: str | None,
        cfg: bool,
        engines: Engines,
        prompt_2: str | None = None,
        negative_prompt_2: str | None = None,
    ) -> dict:
        """The UNet's text inputs, [negative, positive] on the batch axis under CFG, cached:
        encoder_hidden_states, and for SDXL text_embeds (the second encoder's pooled output),
        encoded as StableDiffusionXLImg2ImgPipeline.encode_prompt does."""
        sdxl = bool(self.manifest.text_conditioning)
        if not sdxl:
            negative_prompt = negative_prompt or ""
        key = (prompt, prompt_2, negative_prompt, negative_prompt_2, cfg, engines.label)
        if not cfg:
            key = (prompt, prompt_2, None, None, cfg, engines.label)
        key = (*key, self.state())
        with self._lock:
            cached = self.cache.get(key)
            if cached is not None:
                self.cache.move_to_end(key)
                return cached
        if sdxl:
            negatives = (negative_prompt, negative_prompt_2)
            out = self._encode_xl(prompt, prompt_2, negatives, cfg, engines)
        else:
            prompts = [negative_prompt, prompt] if cfg else [prompt]
            ids = self.tokenizer(prompts)
            hidden = engines.sessions["text_encoder"].run({"input_ids": ids})["last_hidden_state"]
            out = {"encoder_hidden_states": hidden.astype(np.float32, copy=True)}
        with self._lock:
            self.cache[key] = out
            while len(self.cache) > PROMPT_CACHE_SIZE:
                self.cache.popitem(last=False)
        return out

    def _encode_xl(self, prompt, prompt_2, negatives, cfg, engines) -> dict:
        """Each encoder's penultimate states concatenated, pooled from text_encoder_2; the
        i-th encoder present reads the i-th of (prompt, prompt_2), so the refiner reads only
        `prompt`, as in diffusers. Without a negative prompt and with
        force_zeros_for_empty_prompt, the negative embeddings are zeros."""
        xp, conditioning = engines.xp, self.manifest.text_conditioning
        negative_prompt, negative_prompt_2 = negatives
        zeros = negative_prompt is None and conditioning.get("force_zeros_for_empty_prompt")
        texts = [[prompt, prompt_2 or prompt]]
        if cfg and not zeros:
            negative_prompt = negative_prompt or ""
            texts.insert(0, [negative_prompt, negative_prompt_2 or negative_prompt])
        states, pooled = [], None
        for k, encoder in enumerate(self.manifest.text_encoders):
            ids = self.tokenizers[encoder]([row[k] for row in texts])
            out = engines.sessions[encoder].run({"input_ids": ids})
            states.append(out["hidden_states"])
            if encoder == conditioning.get("pooled"):
                pooled = out["text_embeds"]
        hidden = xp.concatenate(states, axis=-1).astype(np.float32, copy=True)
        pooled = pooled.astype(np.float32, copy=True)
        if cfg and zeros:
            hidden = xp.concatenate([xp.zeros_like(hidden), hidden])
            pooled = xp.concatenate([xp.zeros_like(pooled), pooled])
        return {"encoder_hidden_states": hidden, "text_embeds": pooled}
