"""Mixed precision by measured sensitivity: quantize one decoder layer at a time (all its linear weights, the rest
left in float), measure how much the loss on calibration text rises, and give the costliest layers a finer group
size while the variant stays within a size budget.

Measured on calibration text, never on the held-out evaluation text, so the choice does not fit the evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quantize.blockwise import EMBEDDING, LINEAR, LM_HEAD, group_size_for
from quantize.weight_quant import QUANTIZERS

WINDOW = 512


def layer_sensitivity(base_dir: Path, texts: list[str], tokens: int, algorithm: str, group_size: int,
                      group_overrides: dict[str, int]) -> dict[str, float]:
    """Loss increase (nats per token) when only one unit is quantized: each decoder layer ("0", "1", ...) and the
    tied lm_head/embedding ("lm_head")."""
    import torch  # heavy: only this analysis needs PyTorch here
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:tokens]
    windows = [torch.tensor([ids[s : s + WINDOW]]) for s in range(0, len(ids) - 1, WINDOW)]

    def loss() -> float:
        with torch.no_grad():
            return float(np.mean([model(w, labels=w).loss.item() for w in windows]))

    base_loss, costs = loss(), {}
    quantizer = QUANTIZERS[algorithm]
    units = {str(layer): f"model.layers.{layer}." for layer in range(model.config.num_hidden_layers)}
    units[LM_HEAD] = EMBEDDING  # tied: quantizing the embedding quantizes the lm_head too
    for unit, prefix in units.items():
        saved = {}
        for name, parameter in model.named_parameters():
            if name.startswith(prefix) and (LINEAR.match(name) or name == EMBEDDING):
                module = LM_HEAD if name == EMBEDDING else name.removesuffix(".weight")
                weight = parameter.detach().numpy()
                restored = quantizer(weight, 4, group_size_for(module, group_size, group_overrides)).dequantize()
                saved[name] = parameter.detach().clone()
                parameter.data = torch.from_numpy(restored)
        costs[unit] = loss() - base_loss
        for name, parameter in model.named_parameters():
            if name in saved:
                parameter.data = saved[name]
        print(f"  {unit}: +{costs[unit]:.4f} nats/token", flush=True)
    return costs


def finer_layers(costs: dict[str, float], extra_bytes_per_layer: float, budget_bytes: float) -> list[int]:
    """The costliest decoder layers, most costly first, as many as the budget pays for."""
    layers = {int(unit): cost for unit, cost in costs.items() if unit.isdigit()}
    affordable = int(budget_bytes // extra_bytes_per_layer)
    return sorted(layers, key=layers.get, reverse=True)[:affordable]


def mixed_overrides(layers: list[int], fine_group: int, group_overrides: dict[str, int]) -> dict[str, int]:
    """Overrides that put `layers` at `fine_group` (matched first) and keep the others as they were."""
    if not layers:
        return dict(group_overrides)
    pattern = rf"^model\.layers\.({'|'.join(map(str, sorted(layers)))})\."
    return {pattern: fine_group, **group_overrides}
