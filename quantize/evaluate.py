"""Quality of a variant: perplexity on held-out text and greedy-token agreement with the base model.

Both are teacher-forced, so each needs only full-sequence forward passes: the base model (PyTorch)
produces the reference continuations once per source; every variant is scored against them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from quantize.fidelity import block_sums, delta_percent, perplexity_interval
from quantserve.manifest import Quality, atomic_write_text

DATA_DIR = Path(__file__).parent / "data"
PPL_WINDOW = 512
CONTINUATION_TOKENS = 32


@dataclass(frozen=True)
class Reference:
    """Prompts (token ids), the base model's greedy continuation of each, and the base model's
    teacher-forced argmax over that continuation (what every variant is compared with)."""

    prompts: list[list[int]]
    continuations: list[list[int]]
    base_predictions: list[list[int]]
    base_quality: Quality


def heldout_text() -> str:
    return (DATA_DIR / "heldout.txt").read_text(encoding="utf-8")


def eval_data_hash() -> str:
    """Hash of what quality is measured on: figures measured on other data are not comparable."""
    digest = hashlib.sha256()
    for name in ("heldout.txt", "prompts.jsonl"):
        digest.update((DATA_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def agreement_prompts() -> list[list[dict]]:
    lines = (DATA_DIR / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target (one per logits row)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_probs[np.arange(len(targets)), targets]


def windowed_losses(token_ids: list[int], logits_fn, label: str) -> np.ndarray:
    """Loss of every token but the first, over non-overlapping windows; logits_fn(ids) gives [len(ids), vocab]."""
    losses = []
    starts = range(0, len(token_ids) - 1, PPL_WINDOW)
    for start in tqdm(starts, desc=f"  [{label}] perplexity", unit="window", leave=False):
        window = token_ids[start : start + PPL_WINDOW + 1]
        losses.append(token_losses(logits_fn(window[:-1]), np.array(window[1:])))
    return np.concatenate(losses)


def text_quality(losses: np.ndarray, agreement: float, prompts: int, base: Quality | None) -> Quality:
    """Perplexity with its interval, and (given the base's blocks) its change against the base."""
    blocks, counts = block_sums(losses)
    quality = Quality(perplexity=float(np.exp(losses.mean())), perplexity_interval=perplexity_interval(blocks, counts),
                      block_nll=blocks, eval_tokens=len(losses), eval_data_sha256=eval_data_hash(),
                      greedy_agreement=agreement, agreement_prompts=prompts)
    if base is not None and base.block_nll is not None:
        delta, low, high = delta_percent(blocks, base.block_nll, counts)
        quality = quality.model_copy(update={"perplexity_delta_pct": delta,
                                             "perplexity_delta_interval_pct": (low, high)})
    return quality


def teacher_forced_predictions(prompt: list[int], continuation: list[int], logits_fn) -> list[int]:
    """Argmax at each continuation position, given the prompt and the continuation so far."""
    logits = logits_fn((prompt + continuation)[:-1])
    return logits[len(prompt) - 1 :].argmax(axis=-1).tolist()


def greedy_agreement(reference: Reference, logits_fn) -> float:
    """Share of positions where the variant's greedy token equals the base model's (teacher-forced)."""
    matches, total = 0, 0
    for prompt, continuation, expected in zip(
        reference.prompts, reference.continuations, reference.base_predictions, strict=True
    ):
        predicted = teacher_forced_predictions(prompt, continuation, logits_fn)
        matches += sum(p == e for p, e in zip(predicted, expected, strict=True))
        total += len(expected)
    return matches / total


# --- the base model, through PyTorch -------------------------------------------------------------


def torch_logits_fn(model):
    import torch

    def logits_fn(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    return logits_fn


def greedy_continuations(model, pad_id: int, prompts: list[list[int]], batch_size: int = 8) -> list[list[int]]:
    """CONTINUATION_TOKENS greedy tokens after each prompt, generated in left-padded batches (several times faster
    on CPU than one prompt at a time; the attention mask keeps padding out of every row's result)."""
    import torch

    continuations = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="  [base] reference continuations", unit="batch", leave=False):
        batch = prompts[start : start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=CONTINUATION_TOKENS,
                                 min_new_tokens=CONTINUATION_TOKENS, do_sample=False, pad_token_id=pad_id)
        continuations.extend(row[width:].tolist() for row in out)
    return continuations


def build_reference(base_dir: Path, cache_path: Path, source_sha: str) -> tuple[Reference, Quality]:
    """Greedy continuations and perplexity of the base model, cached per source and evaluation data."""
    if cache_path.is_file():
        cached = json.loads(cache_path.read_text())
        if cached.get("source_sha256") == source_sha and cached.get("eval_data_sha256") == eval_data_hash():
            quality = Quality(**cached["quality"])
            reference = Reference(cached["prompts"], cached["continuations"], cached["base_predictions"], quality)
            return reference, quality
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    prompts = [tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for messages in agreement_prompts()]
    continuations = greedy_continuations(model, tokenizer.eos_token_id, prompts)
    logits_fn = torch_logits_fn(model)
    predictions = [teacher_forced_predictions(p, c, logits_fn) for p, c in zip(prompts, continuations, strict=True)]
    heldout_ids = tokenizer(heldout_text(), add_special_tokens=False)["input_ids"]
    losses = windowed_losses(heldout_ids, logits_fn, "base")
    quality = text_quality(losses, 1.0, len(prompts), None)
    quality = quality.model_copy(update={"perplexity_delta_pct": 0.0, "perplexity_delta_interval_pct": (0.0, 0.0)})
    reference = Reference(prompts, continuations, predictions, quality)
    payload = {"source_sha256": source_sha, "eval_data_sha256": eval_data_hash(), "prompts": prompts,
               "continuations": continuations, "base_predictions": predictions, "quality": quality.model_dump()}
    atomic_write_text(cache_path, json.dumps(payload) + "\n")
    return reference, quality


# --- ONNX variants, through ONNX Runtime ----------------------------------------------------------


def onnx_logits_fn(onnx_dir: Path):
    """Full-sequence logits from a GenAI-built graph, with an empty KV cache."""
    import onnxruntime as ort

    from serving.engines.onnx_model import DecoderShape

    shape = DecoderShape.from_genai_config(onnx_dir)
    session = ort.InferenceSession(str(onnx_dir / shape.filename), providers=["CPUExecutionProvider"])
    past = np.zeros((1, shape.kv_heads, 0, shape.head_size), np.float32)
    empty_past = {name % layer: past for layer in range(shape.layers) for name in (shape.key_name, shape.value_name)}

    def logits_fn(ids: list[int]) -> np.ndarray:
        feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                **empty_past}
        return session.run(["logits"], feed)[0][0]

    return logits_fn


def evaluate_onnx(onnx_dir: Path, reference: Reference, label: str) -> Quality:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    logits_fn = onnx_logits_fn(onnx_dir)
    ids = tokenizer.encode(heldout_text(), add_special_tokens=False).ids
    losses = windowed_losses(ids, logits_fn, label)
    agreement = greedy_agreement(reference, logits_fn)
    return text_quality(losses, agreement, len(reference.prompts), reference.base_quality)


# --- embedding variants ---------------------------------------------------------------------------


def embedding_sentences() -> list[str]:
    text = heldout_text().replace("\n", " ")
    return [s.strip() + "." for s in text.split(". ") if len(s.strip()) > 20][:48]


def evaluate_embedding(onnx_dir: Path, source_dir: Path) -> Quality:
    """Mean cosine similarity between the ONNX variant's embeddings and sentence-transformers' own."""
    from sentence_transformers import SentenceTransformer

    from serving.engines.onnx_embedder import OnnxEmbedder

    sentences = embedding_sentences()
    reference = SentenceTransformer(str(source_dir), device="cpu").encode(sentences, normalize_embeddings=True)
    vectors, _ = OnnxEmbedder(onnx_dir).embed(sentences)
    cosine = float((np.asarray(reference) * vectors).sum(axis=1).mean())
    return Quality(cosine_to_reference=cosine, eval_tokens=None)
