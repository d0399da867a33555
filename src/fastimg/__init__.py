"""fastimg: fast, reproducible Stable Diffusion img2img over exported engines."""

__version__ = "0.1.0"
__all__ = ["Img2ImgPipeline"]


def __getattr__(name: str):
    # Lazy, so that `import fastimg` (and the CLI's --help) stays instant.
    if name == "Img2ImgPipeline":
        from .diffusion.pipeline import Img2ImgPipeline

        return Img2ImgPipeline
    raise AttributeError(f"module 'fastimg' has no attribute {name!r}")
