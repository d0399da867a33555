"""The ComfyUI nodes: Load fastimg engines, fastimg img2img and Save fastimg image.

ComfyUI reads each class's INPUT_TYPES, RETURN_TYPES, FUNCTION and CATEGORY; VALIDATE_INPUTS
refuses a bad engine folder or sampler before the queue runs (a node error carrying fastimg's
one-line message); errors while running are fastimg's own, whose text is that one line.
"""

from pathlib import Path

from ..backends.registry import BACKEND_CHOICES, PRECISION_CHOICES
from ..errors import FastImgError, InputError
from ..settings import MASKED_CONTENTS, SAMPLERS, SEED_LIMIT, SETTINGS
from .engines import EnginesHandle, parse_loras

ORIGINAL = MASKED_CONTENTS[0]  # the default: the masked region starts from the image

CATEGORY = "fastimg"
ENGINES = "FASTIMG_ENGINES"
LABELS = "FASTIMG_LABELS"
DEFAULT_SAMPLER = "default"  # the model's own scheduler, as fastimg transform without --scheduler
SETTING = {setting.name: setting for setting in SETTINGS}


class LoadEngines:
    """An engine folder loaded on a backend (once per folder, backend, precision and LoRAs),
    or the address of a running `fastimg serve`."""

    @classmethod
    def INPUT_TYPES(cls):
        """The inputs ComfyUI draws: folder, backend, precision; LoRAs, server address."""
        return {
            "required": {
                "engines_folder": ("STRING", {"default": "", "tooltip": "An exported folder."}),
                "backend": (list(BACKEND_CHOICES), {"default": "auto"}),
                "precision": (list(PRECISION_CHOICES), {"default": "auto"}),
            },
            "optional": {
                "loras": ("STRING", {"default": "", "multiline": True,
                                     "tooltip": "LoRA files, one FILE[:SCALE] a line."}),
                "server_url": ("STRING", {"default": "",
                                          "tooltip": "A running fastimg serve (http://HOST:PORT)"
                                                     "; empty: run the engines in ComfyUI."}),
            },
        }  # fmt: skip

    RETURN_TYPES = (ENGINES,)
    RETURN_NAMES = ("engines",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, engines_folder=None):
        """True, or fastimg's message when the folder is missing or broken (a node error)."""
        # Only the folder: ComfyUI reports a refusal once per input this method takes. A folder
        # from another node's output is not known yet (None): load() checks it.
        if not isinstance(engines_folder, str) or not engines_folder.strip():
            return True  # a server_url, or load() says what is missing
        from ..engine_folder.manifest import load_manifest

        try:
            load_manifest(Path(engines_folder.strip()).expanduser())
        except FastImgError as exc:
            return str(exc)
        return True

    @classmethod
    def IS_CHANGED(cls, engines_folder, backend, precision, loras="", server_url=""):
        """What makes ComfyUI run the node again: the handle's key."""
        try:  # the manifest's time is in the key: a re-exported folder loads anew
            return repr(_handle(engines_folder, backend, precision, loras, server_url).key())
        except FastImgError:
            return float("nan")  # never equal to itself: ComfyUI runs the node, which says why

    def load(self, engines_folder, backend, precision, loras="", server_url=""):
        """The engines handle, its engines loaded (or the server's address)."""
        handle = _handle(engines_folder, backend, precision, loras, server_url)
        if not handle.url:
            handle.pipeline()
        return (handle,)


class Img2Img:
    """fastimg's img2img on each image of the batch, with one seed: the image `fastimg
    transform` makes with the same settings, pixel for pixel."""

    @classmethod
    def INPUT_TYPES(cls):
        """The img2img inputs, by fastimg transform's names; control, mask, LoRAs optional."""
        return {
            "required": {
                "engines": (ENGINES,),
                "image": ("IMAGE",),
                "prompt": ("STRING", {"default": "", "multiline": True}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True}),
                "strength": ("FLOAT", {"default": 0.8, "min": 0.01, "max": 1.0, "step": 0.01}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000}),
                "guidance": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1}),
                "sampler": ([DEFAULT_SAMPLER, *SAMPLERS], {"default": DEFAULT_SAMPLER}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_LIMIT - 1,
                                 "control_after_generate": True}),
            },
            "optional": {
                "control_image": ("IMAGE",),
                "control_scale": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 2.0, "step": 0.05}),
                "mask": ("MASK",),
                "lora_scales": ("STRING", {"default": "",
                                           "tooltip": "NAME:SCALE,... of the loaded LoRAs; "
                                                      "'none': all off; empty: as loaded."}),
                # (after the older inputs: saved workflows list widget values in order)
                "mask_blur": ("INT", {"default": 0, "min": 0, "max": 256,
                                      "tooltip": "Blur the mask by PX pixels first (soft seam)."}),
                "masked_content": (list(MASKED_CONTENTS), {"default": ORIGINAL,
                                   "tooltip": "What the masked region starts from (A1111's "
                                              "masked content)."}),
            },
        }  # fmt: skip

    RETURN_TYPES = ("IMAGE", LABELS)
    RETURN_NAMES = ("image", "labels")
    FUNCTION = "transform"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, sampler=None):
        """True, or fastimg's message for an unknown sampler (a node error)."""
        if sampler is None or sampler == DEFAULT_SAMPLER:  # None: another node's output
            return True
        try:
            SETTING["scheduler"].check(sampler)
        except FastImgError as exc:
            return str(exc)
        return True

    def transform(self, engines, image, prompt, negative_prompt, strength, steps, guidance,
                  sampler, seed, control_image=None, control_scale=0.8, mask=None,
                  mask_blur=0, masked_content=ORIGINAL, lora_scales=""):  # fmt: skip
        """(the images, their labels) of every image of the batch."""
        from .run import transform_batch

        settings = {
            "prompt": prompt,
            "negative_prompt": negative_prompt or None,
            "strength": strength,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "scheduler": None if sampler == DEFAULT_SAMPLER else sampler,
            "seed": seed,
            "controlnet_conditioning_scale": control_scale,
            "lora_scales": lora_scales.strip() or None,
            # (shaping a mask: left unset without one, as fastimg transform refuses them)
            "mask_blur": (mask_blur or None) if mask is not None else None,
            "masked_content": masked_content
            if mask is not None and masked_content != ORIGINAL
            else None,
        }
        return transform_batch(engines, image, settings, control_image, mask)


class SaveImage:
    """PNGs in ComfyUI's output folder with fastimg's labels (A1111 parameters, the AI label,
    the settings) beside ComfyUI's own workflow metadata, written as ComfyUI writes it."""

    @classmethod
    def INPUT_TYPES(cls):
        """Images with their labels, a file name prefix; ComfyUI's prompt and workflow."""
        return {
            "required": {
                "images": ("IMAGE",),
                "labels": (LABELS,),
                "filename_prefix": ("STRING", {"default": "fastimg"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def save(self, images, labels, filename_prefix="fastimg", prompt=None, extra_pnginfo=None):
        """Write the PNGs; ComfyUI's UI and /history list them."""
        from .saving import save_batch

        return {"ui": {"images": save_batch(images, labels, filename_prefix, prompt,
                                            extra_pnginfo)}}  # fmt: skip


def _handle(folder: str, backend: str, precision: str, loras: str, url: str) -> EnginesHandle:
    """The handle of the Load node's inputs (its folder, or a checked server address)."""
    from .remote import check_url

    url = check_url(url) if url.strip() else ""
    if not url and not folder.strip():
        raise InputError("no engine folder: give the folder fastimg export wrote (or a server_url)")
    return EnginesHandle(folder.strip(), backend, precision, parse_loras(loras), url)


NODE_CLASS_MAPPINGS = {
    "FastimgLoadEngines": LoadEngines,
    "FastimgImg2Img": Img2Img,
    "FastimgSaveImage": SaveImage,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FastimgLoadEngines": "Load fastimg engines",
    "FastimgImg2Img": "fastimg img2img",
    "FastimgSaveImage": "Save fastimg image",
}
