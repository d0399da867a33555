"""The arguments only SDXL engine folders take (StableDiffusionXLImg2ImgPipeline's names)."""

SDXL_ARGUMENTS = (
    "prompt_2",
    "negative_prompt_2",
    "original_size",
    "crops_coords_top_left",
    "target_size",
    "aesthetic_score",
    "negative_aesthetic_score",
)
# The refiner (requires_aesthetics_score) takes the scores; the base alone takes target_size.
REFINER_ONLY = ("aesthetic_score", "negative_aesthetic_score")
BASE_ONLY = ("target_size",)
