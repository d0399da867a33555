"""One process: load an engine folder on OpenVINO bf16 with dynamic shapes, run one sd15-job call
and a second; print the times and the peak RSS as a JSON line."""

import json
import resource
import sys
import time


def main() -> None:
    """Time the load and first call, then a second call, of the folder named on the command line."""
    start = time.perf_counter()
    from PIL import Image

    import fastimg
    from fastimg.diffusion.pipeline import Img2ImgPipeline

    pipe = Img2ImgPipeline.from_engines(sys.argv[1], backend="openvino", precision="bf16")
    image = Image.new("RGB", (512, 512), (120, 90, 60))
    settings = dict(strength=0.5, num_inference_steps=4, guidance_scale=0.0, seed=1)
    pipe("a red fox", image, **settings)
    first = time.perf_counter()
    pipe("a red fox", image, **settings)
    second = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"code": fastimg.__file__, "cold_start_s": round(first - start, 2),
                      "call_s": round(second - first, 2), "peak_rss_mb": peak}))  # fmt: skip


if __name__ == "__main__":
    main()
