"""What a run's recorded CPU flags (`machine.cpu_flags` in results.json) say about the kernels engines can use.

Sentences for BENCHMARKS.md: every claim about the machine's instruction sets comes from these flags, or says that
none were recorded.
"""

from __future__ import annotations

AVX512_EXTRAS = (("avx512_bf16", "BF16"), ("avx512_vnni", "VNNI"), ("avx512_fp16", "FP16"))
BF16_ARITHMETIC = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX tiles, x86 AVX-512 dot products, Arm's extension


def vector_isa(flags: list[str] | None) -> str:
    """The widest vector instructions the CPU has, e.g. `AVX2 and FMA, no AVX-512` or `AVX-512 (BF16, VNNI), AMX`."""
    if flags is None:
        return "instruction sets not recorded"
    have = set(flags)
    if "avx512f" in have:
        extras = [name for flag, name in AVX512_EXTRAS if flag in have]
        amx = ", AMX" if any(flag.startswith("amx") for flag in have) else ""
        return "AVX-512" + (f" ({', '.join(extras)})" if extras else "") + amx
    if "avx2" in have:
        return "AVX2" + (" and FMA" if "fma" in have else "") + ", no AVX-512"
    if "asimd" in have:
        return "Arm NEON" + (", SVE" if "sve" in have else "") + (", BF16" if "bf16" in have else "")
    return ", ".join(flags) or "no vector extensions listed"


def bf16_arithmetic(flags: list[str] | None) -> str:
    """Whether bf16 weights can be multiplied as bf16 here, or only stored as bf16 and widened to fp32."""
    if flags is None:
        return ("the run recorded no CPU flags, so it is not known whether its bf16 kernels had bf16 arithmetic "
                "(AVX512-BF16, AMX) on this CPU")
    found = [flag for flag in BF16_ARITHMETIC if flag in flags]
    if found:
        return f"this CPU has bf16 arithmetic ({', '.join(found)}) for vLLM's bf16 kernels to use"
    return (f"this CPU has no bf16 arithmetic ({vector_isa(flags)}; no avx512_bf16 or amx_bf16), so bf16 weights "
            "are widened to fp32 to compute: bf16 saves bytes read, not multiply work")
