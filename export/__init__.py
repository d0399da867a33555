"""fastimg's export stage: diffusers pipelines in, verified ONNX engine folders out.

The only part of fastimg (with the bench baseline) that imports torch, diffusers or transformers.
"""
