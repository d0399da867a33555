"""A CLIP byte-level BPE vocabulary learned offline from a small bundled corpus.

Real CLIP vocabularies cannot be downloaded here; this writes the same file format (vocab.json,
merges.txt) with the same byte alphabet, end-of-word suffix and special tokens, so transformers'
CLIPTokenizer and fastimg's tokenizers-based runtime both load it like the real one.
"""

import collections
import json
import re
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

CORPUS = """
a photo of a cat sitting on a wooden table in the morning light, highly detailed, 4k
a watercolor painting of a mountain landscape with a river and pine trees at sunset
portrait of a woman with red hair, oil painting, dramatic lighting, studio photograph
a sketch of a house colored with bright markers, children's drawing, simple shapes
product shot of a white sneaker on a marble floor, soft shadows, commercial photography
cyberpunk city street at night with neon signs and rain, cinematic, wide angle
an astronaut riding a horse on the moon, digital art, trending, sharp focus
a bowl of fruit with apples oranges and grapes, still life, realistic texture
anime style character with blue eyes and a school uniform, clean line art
a cozy living room interior with plants, sofa, warm lamp light and large windows
the old lighthouse on a rocky coast during a storm, waves crashing, moody sky
blurry, low quality, watermark, text, deformed hands, extra fingers, jpeg artifacts
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def _words(text: str) -> collections.Counter:
    byte_map = bytes_to_unicode()
    counts = collections.Counter()
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()):
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        counts[tuple(symbols)] += 1
    return counts


def learn_merges(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken by order)."""
    words = _words(text)
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for symbols, freq in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = {}
        for symbols, freq in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + freq
        words = merged
    return merges


def write_vocab(folder: Path, num_merges: int = 600) -> int:
    """Write vocab.json and merges.txt into `folder`; return the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    merges = learn_merges(CORPUS, num_merges)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)
