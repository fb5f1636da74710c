"""An ONNX Runtime GenAI-built decoder with one KV-cache buffer shared by a fixed number of slots.

The graph's GroupQueryAttention reads each sequence's valid length from its attention-mask row and,
when a past and a present tensor are the same memory, appends the new keys and values in place. So
each slot keeps its cache where it is between steps: a decode step over n sequences binds the first
n slots as one batch, with no copying. The scheduler keeps running sequences packed in slots 0..n-1
(see `move_slot`). The lm_head runs only on the positions a step asks for (decoder_graph.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.engines.decoder_graph import LOGIT_ROWS, session_config, with_logit_rows


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

    def __init__(self, folder: Path, slots: int, context_length: int, threads: int = 1,
                 profile_prefix: str | None = None) -> None:
        self.shape = DecoderShape.from_genai_config(folder)
        self.slots, self.context_length = slots, context_length
        self.session = decoder_session(folder / self.shape.filename, threads, profile_prefix)
        self.selects_rows = LOGIT_ROWS in {value.name for value in self.session.get_inputs()}
        buffer_shape = (slots, self.shape.kv_heads, context_length, self.shape.head_size)
        self.buffers = [np.zeros(buffer_shape, np.float32) for _ in range(2 * self.shape.layers)]
        self.bindings = []
        for layer in range(self.shape.layers):
            self.bindings.append((self.shape.key_name % layer, self.shape.present_key_name % layer))
            self.bindings.append((self.shape.value_name % layer, self.shape.present_value_name % layer))

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one position of one sequence takes, over all layers."""
        return sum(buffer[0, :, 0].nbytes for buffer in self.buffers)

    def forward(self, first_slot: int, input_ids: np.ndarray, lengths: list[int],
                rows: np.ndarray | None = None) -> np.ndarray:
        """Run `input_ids` [n, s] for slots first_slot..first_slot+n-1, whose sequences are `lengths` long
        after this step (what their caches held plus these s tokens; with s > 1, n must be 1: ONNX Runtime's
        attention takes several new tokens after a cached past for one sequence at a time). `rows`: the
        positions among the s tokens whose logits to compute, the last one by default. Returns [n, rows, vocab]."""
        import onnxruntime as ort

        count, steps = input_ids.shape
        rows = np.array([steps - 1], np.int64) if rows is None else np.asarray(rows, np.int64)
        mask = np.zeros((count, max(lengths)), np.int64)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", mask)
        if self.selects_rows:
            binding.bind_cpu_input(LOGIT_ROWS, rows)
        for buffer, (past_name, present_name) in zip(self.buffers, self.bindings, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer[first_slot : first_slot + count])
            binding.bind_ortvalue_input(past_name, value)
            binding.bind_ortvalue_output(present_name, value)
        binding.bind_output("logits")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()
        return logits if self.selects_rows else logits[:, rows]

    def move_slot(self, source: int, target: int, length: int) -> None:
        """Copy a sequence's cache (its first `length` positions) from one slot to another."""
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]

    def read_cache(self, slot: int, length: int) -> np.ndarray:
        """A copy of a slot's first `length` positions: [2 x layers, kv_heads, length, head_size]."""
        return np.stack([buffer[slot, :, :length] for buffer in self.buffers])

    def write_cache(self, slot: int, cache: np.ndarray, length: int) -> None:
        """Put the first `length` positions of a `read_cache` copy into a slot."""
        for buffer, layer in zip(self.buffers, cache, strict=True):
            buffer[slot, :, :length] = layer[:, :length]


def decoder_session(path: Path, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime session over the decoder with a `logit_rows` input where the graph allows it
    (decoder_graph.py); `threads` intra-op threads, one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    graph = with_logit_rows(path)
    if graph is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for key, value in session_config(path.parent).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
