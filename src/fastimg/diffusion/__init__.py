"""The diffusion call: schedules, samplers, seeded noise, prompts and the img2img pipeline."""
