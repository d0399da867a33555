"""The stream engine: video frames through the img2img pipeline, StreamDiffusion-style."""
