"""Workloads of controlled shape: synthetic prompts of an exact token count, length distributions, request bodies.

The tokenizer is a small byte-level BPE (the kind SmolLM2 uses) trained here, so the unit tier needs no built model;
`write_synthetic_prompts` reads it from a tokenizer.json as it reads the model's own.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from loadtest import cli
from loadtest.runner import locust_command
from loadtest.sweep import step_for, sweep_from_args, write_step_prompts
from loadtest.synthetic import write_synthetic_prompts
from loadtest.workload import PromptCycle, WorkloadError, chat_request, length_sampler, load_prompt_set

TEXT = ("the quick brown fox jumps over lazy dogs while seven bright lanterns glow across quiet harbor towns and "
        "tired sailors mend their heavy nets before winter storms arrive from distant northern seas")
WORDS = TEXT.split(" ")


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(0)
    tokenizer.train_from_iterator([" ".join(rng.choices(WORDS, k=30)) for _ in range(200)], trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def prompts_and_lengths(path, tokenizer_json):
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    items = [json.loads(line) for line in path.read_text().splitlines()]
    counted = [len(tokenizer.encode(item["messages"][0]["content"], add_special_tokens=False).ids) for item in items]
    return items, counted


def test_synthetic_prompts_have_exactly_the_drawn_token_count(tmp_path, tokenizer_json):
    lengths = write_synthetic_prompts(tmp_path / "p.jsonl", tokenizer_json, "uniform:20:60", count=40, seed=3)
    items, counted = prompts_and_lengths(tmp_path / "p.jsonl", tokenizer_json)
    assert counted == lengths == [item["input_tokens"] for item in items]
    assert min(lengths) >= 20 and max(lengths) <= 60 and len(set(lengths)) > 10
    assert len({item["messages"][0]["content"] for item in items}) == 40  # no prompt repeats
    assert [p.id for p in load_prompt_set(str(tmp_path / "p.jsonl"))] == [item["id"] for item in items]


def test_synthetic_prompts_follow_the_seed(tmp_path, tokenizer_json):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        write_synthetic_prompts(tmp_path / f"{name}.jsonl", tokenizer_json, "32", count=5, seed=seed)
    a, b, c = ((tmp_path / f"{name}.jsonl").read_text() for name in "abc")
    assert a == b and a != c
    assert prompts_and_lengths(tmp_path / "a.jsonl", tokenizer_json)[1] == [32] * 5


def test_length_distributions_have_their_shape():
    rng = random.Random(5)
    fixed = length_sampler("128", rng, "input length")
    normal = length_sampler("normal:200:20", rng, "input length")
    draws = [normal() for _ in range(2000)]
    assert {fixed() for _ in range(10)} == {128}
    assert statistics.mean(draws) == pytest.approx(200, abs=3) and statistics.stdev(draws) == pytest.approx(20, abs=2)
    with pytest.raises(WorkloadError, match="bad input length"):
        length_sampler("normal:-5:2", rng, "input length")


def test_request_sets_exact_lengths_and_leaves_the_temperature_to_the_server():
    messages = [{"role": "user", "content": "hi"}]
    body = chat_request("m:v", messages, 64, temperature=None, exact=True)
    assert "temperature" not in body  # the server's default: OpenAI's 1.0
    assert body["ignore_eos"] is True and body["min_tokens"] == body["max_tokens"] == 64
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    natural = chat_request("m:v", messages, 64, temperature=0.0, exact=False)
    assert natural["temperature"] == 0.0 and "ignore_eos" not in natural and "min_tokens" not in natural


def test_prompts_cycle_through_all_before_repeating():
    prompts = load_prompt_set("short")
    cycle = PromptCycle(prompts, random.Random(0))
    first_round = [cycle.take().id for _ in prompts]
    assert sorted(first_round) == sorted(p.id for p in prompts)
    assert [cycle.take().id for _ in prompts] == first_round


def test_each_step_of_a_sweep_sends_prompts_no_other_step_or_run_sent(tmp_path, tokenizer_json):
    """A prefix cache must never see a synthetic prompt twice: not across levels, variants or runs."""
    texts = []
    for run_id in ("run-a", "run-b"):
        args = _run_args(tmp_path, run_id, tokenizer_json)
        sweep = sweep_from_args(args)
        for model_id, level in (("m:v", 1.0), ("m:v", 2.0), ("m:w", 1.0)):
            step = step_for(sweep, model_id, level)
            write_step_prompts(sweep, step, progress=lambda line: None)
            assert locust_command(step)[locust_command(step).index("--prompts") + 1] == step.prompts
            texts += [item.text for item in load_prompt_set(step.prompts)]
    assert len(texts) == 6 * 20 and len(set(texts)) == len(texts)


def _run_args(tmp_path, run_id: str, tokenizer_json):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    return parser.parse_args(["loadtest", "run", "--model", "m", "--rate", "1,2", "--input-tokens", "24",
                              "--tokenizer", str(tokenizer_json), "--max-requests", "20", "--seed", "7",
                              "--reports-dir", str(tmp_path), "--run-id", run_id])
