"""What the hardware allows: FLOPs of each stage (counted by torch) and the matmul peak.

A stage's time against its FLOP count and the measured peak says how close to the machine's
limit an engine runs, and what speed-up is possible at all.
"""

import time

from .stages import STAGES, diffusers_stages


def stage_flops(diffusers_side) -> dict:
    """FLOPs of each stage of one diffusers call of the job (UNet: all its calls together)."""
    from torch.utils.flop_counter import FlopCounterMode

    pipe, counts = diffusers_side.pipe, dict.fromkeys(STAGES, 0)
    originals = {}

    def counting(stage, function):
        def wrapper(*args, **kwargs):
            with FlopCounterMode(display=False) as counter:
                result = function(*args, **kwargs)
            counts[stage] = counts.get(stage, 0) + counter.get_total_flops()
            return result

        return wrapper

    targets = diffusers_stages(pipe)
    for stage, owner, name in targets:
        originals[id(owner), name] = getattr(owner, name)
        setattr(owner, name, counting(stage, originals[id(owner), name]))
    try:
        diffusers_side.once()
    finally:
        for _, owner, name in targets:
            setattr(owner, name, originals[id(owner), name])
    return counts


def native_precisions() -> tuple[str, ...]:
    """The precisions this CPU multiplies natively: bf16 only with AVX-512 BF16 or AMX.

    Elsewhere torch emulates bf16 matmuls at a few GFLOP/s, and measuring that "peak" would
    take minutes and mean nothing.
    """
    from fastimg.machine import cpu_info

    flags = cpu_info()[1]
    return ("fp32", "bf16") if {"avx512_bf16", "amx_bf16"} & set(flags) else ("fp32",)


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """Measured matrix-multiply GFLOP/s of this CPU in each native precision (torch)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    peaks = {}
    try:
        for name in native_precisions():
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
            a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
            for _ in range(2):
                a @ b
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            seconds = (time.perf_counter() - start) / repeats
            peaks[name] = 2 * size**3 / seconds / 1e9
    finally:
        torch.set_num_threads(before)
    return peaks


def efficiency(stages: dict, flops: dict, peak: float) -> dict:
    """Per stage: GFLOP/s achieved and its fraction of `peak`; plus the whole job's floor."""
    out = {}
    for stage in STAGES:
        seconds = stages[stage]
        gflops = flops[stage] / 1e9
        rate = gflops / seconds if seconds > 0 else None
        out[stage] = {
            "gflop": gflops,
            "seconds": seconds,
            "gflop_per_s": rate,
            "fraction_of_peak": rate / peak if rate else None,
        }
    return out
