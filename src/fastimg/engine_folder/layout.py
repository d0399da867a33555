"""What an engine folder holds, by name: its manifest file, the format it is written in, the
components and the tokenizer of each text encoder. Both the schema and the reader take these
from here; nothing here imports pydantic, so the runtime can name them without loading it."""

FORMAT = "fastimg-engine"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# SDXL folders have a second text encoder (the refiner has only that one), each with its
# tokenizer: the manifest's text_conditioning.text_encoders names those present.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
TOKENIZER_OF = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}
