"""An ONNX Runtime GenAI-built decoder with one KV-cache buffer shared by a fixed number of slots.

The graph's GroupQueryAttention reads each sequence's valid length from its attention-mask row and,
when a past and a present tensor are the same memory, appends the new keys and values in place. So
each slot keeps its cache where it is between steps: a decode step over n sequences binds the first
n slots as one batch, with no copying. The scheduler keeps running sequences packed in slots 0..n-1
(see `move_slot`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    key_name: str
    value_name: str
    present_key_name: str
    present_value_name: str
    filename: str

    @classmethod
    def from_genai_config(cls, folder: Path) -> DecoderShape:
        model = json.loads((folder / "genai_config.json").read_text())["model"]
        decoder = model["decoder"]
        eos = model["eos_token_id"]
        return cls(
            layers=decoder["num_hidden_layers"], kv_heads=decoder["num_key_value_heads"],
            head_size=decoder["head_size"], vocab_size=model["vocab_size"],
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
            key_name=decoder["inputs"]["past_key_names"], value_name=decoder["inputs"]["past_value_names"],
            present_key_name=decoder["outputs"]["present_key_names"],
            present_value_name=decoder["outputs"]["present_value_names"], filename=decoder["filename"],
        )


class SlotKVModel:
    """Session plus `[slots, kv_heads, context, head_size]` key and value buffers for every layer."""

    def __init__(self, folder: Path, slots: int, context_length: int, threads: int = 1) -> None:
        import onnxruntime as ort

        self.shape = DecoderShape.from_genai_config(folder)
        self.slots, self.context_length = slots, context_length
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / self.shape.filename), options,
                                            providers=["CPUExecutionProvider"])
        buffer_shape = (slots, self.shape.kv_heads, context_length, self.shape.head_size)
        self.buffers = [np.zeros(buffer_shape, np.float32) for _ in range(2 * self.shape.layers)]
        self.bindings = []
        for layer in range(self.shape.layers):
            self.bindings.append((self.shape.key_name % layer, self.shape.present_key_name % layer))
            self.bindings.append((self.shape.value_name % layer, self.shape.present_value_name % layer))

    def forward(self, first_slot: int, input_ids: np.ndarray, lengths: list[int]) -> np.ndarray:
        """Run `input_ids` [n, s] for slots first_slot..first_slot+n-1, whose sequences are `lengths` long
        after this step (prompt plus new tokens). Returns logits [n, s, vocab]."""
        import onnxruntime as ort

        count = input_ids.shape[0]
        mask = np.zeros((count, max(lengths)), np.int64)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        for buffer, (past_name, present_name) in zip(self.buffers, self.bindings, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer[first_slot : first_slot + count])
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)
        binding.bind_output("logits")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[-1].numpy()

    def move_slot(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's cache (its first `length` positions) from one slot to another."""
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]
