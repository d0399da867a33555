"""Real-time img2img on a stream of frames: a camera, a video, a frame folder or raw frames."""
