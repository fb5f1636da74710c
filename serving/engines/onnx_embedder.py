"""The embeddings runtime: an encoder exported by `quantize` (model.onnx, tokenizer.json, pooling.json) run with
ONNX Runtime; pooling and L2 normalisation as sentence-transformers does them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


class OnnxEmbedder:
    """Runs an exported encoder: tokenize, one batched forward pass, pool, normalise.

    Used by the embeddings replica and by quantize's quality check, so both compute the same vectors.
    """

    def __init__(self, folder: Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.pooling = json.loads((folder / "pooling.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.pooling["max_tokens"])
        self.tokenizer.enable_padding()
        self.dimensions = int(self.session.get_outputs()[0].shape[-1])

    def embed(self, texts: list[str]):
        """(vectors [n, dims] float32, token count per text)."""
        encodings = self.tokenizer.encode_batch(texts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = self.session.run(None, feed)[0]
        return pool(hidden, mask, self.pooling), [int(m.sum()) for m in mask]


def pool(hidden, mask, pooling: dict):
    """Mean (or CLS) pooling over real tokens, then L2 normalisation."""
    if pooling["mode"] == "cls":
        vectors = hidden[:, 0]
    else:
        weights = mask[..., None].astype(hidden.dtype)
        vectors = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    if pooling.get("normalize", True):
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return vectors.astype(np.float32)
