"""fastimg: fast, reproducible Stable Diffusion img2img over exported engines."""

__version__ = "0.1.0"
