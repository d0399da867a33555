"""fastimg's ComfyUI custom nodes: ComfyUI imports this package from custom_nodes (through the
folder `fastimg comfyui install` writes) and reads the two mappings. Nothing here imports
torch; the nodes convert ComfyUI's tensors inside their functions."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
