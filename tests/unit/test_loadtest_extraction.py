"""The constrained workload: prompts with a `response_format` (the shipped `extraction` set's JSON schemas) reach the
request body, a bad one in a prompt file is a one-line error naming file:line, and every shipped schema is one the
server accepts and compiles, so a schema the server would refuse with a 400 fails here and not in a load test."""

from __future__ import annotations

import argparse
import json

import pytest

from loadtest import cli
from loadtest.compare import compare_runs
from loadtest.report import write_report
from loadtest.results import build_results
from loadtest.sweep import _meta as sweep_meta
from loadtest.sweep import sweep_from_args
from loadtest.workload import WorkloadError, chat_request, load_prompt_set
from serving.engines.grammar import TokenGrammars
from serving.protocol import ChatCompletionRequest
from tests.helpers import report_records
from tests.helpers.small_tokenizer import END_OF_SEQUENCE, unit_tokenizer

EXTRACTION = load_prompt_set("extraction")


@pytest.fixture(scope="module")
def grammars() -> TokenGrammars:
    tokenizer = unit_tokenizer()
    return TokenGrammars.from_tokenizer(tokenizer, [tokenizer.token_to_id(END_OF_SEQUENCE)])


def test_every_extraction_prompt_asks_for_a_strict_closed_schema():
    assert len(EXTRACTION) >= 10 and len({p.id for p in EXTRACTION}) == len(EXTRACTION)
    for prompt in EXTRACTION:
        spec = prompt.response_format["json_schema"]
        assert prompt.response_format["type"] == "json_schema" and spec["strict"] is True, prompt.id
        schema = spec["schema"]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, prompt.id
        assert sorted(schema["required"]) == sorted(schema["properties"]), prompt.id


def test_free_prompt_sets_have_no_response_format():
    assert all(prompt.response_format is None for prompt in load_prompt_set("short"))


def test_the_request_carries_the_prompts_response_format():
    prompt = EXTRACTION[0]
    body = chat_request("m:v", prompt.messages, 64, temperature=0.0, exact=False,
                        response_format=prompt.response_format)
    assert body["response_format"] == prompt.response_format and body["messages"] == prompt.messages
    assert "response_format" not in chat_request("m:v", prompt.messages, 64, temperature=0.0, exact=False)


@pytest.mark.parametrize("prompt", EXTRACTION, ids=lambda prompt: prompt.id)
def test_the_server_accepts_and_compiles_every_shipped_schema(prompt, grammars):
    body = chat_request("smollm2-135m:onnx-int4", prompt.messages, 64, temperature=0.0, exact=False,
                        response_format=prompt.response_format)
    request = ChatCompletionRequest.model_validate(body)  # a refused keyword is a ValidationError (the 400)
    constraint = request.constraints.constraint
    assert constraint is not None and constraint.json_schema["properties"] == (
        prompt.response_format["json_schema"]["schema"]["properties"])
    assert grammars.matcher(constraint).allowed_tokens_mask().any()  # compiled over a tokenizer, and can start


@pytest.mark.parametrize(("response_format", "problem"), [
    ("json", "expected a JSON object"),
    ({"type": "xml"}, "type 'xml'"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema needs"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": "yes"}}, "strict"),
])
def test_a_bad_response_format_names_the_file_and_line(tmp_path, response_format, problem):
    path = tmp_path / "set.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "hi"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "response_format": response_format}))
    with pytest.raises(WorkloadError) as bad:
        load_prompt_set(str(path))
    message = str(bad.value)
    assert message.startswith(f"{path}:2: bad response_format") and problem in message and "\n" not in message


def _sweep(tmp_path, prompts: str):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    return sweep_from_args(parser.parse_args(["loadtest", "run", "--model", "m", "--users", "1", "--prompts", prompts,
                                              "--reports-dir", str(tmp_path), "--run-id", prompts]))


def test_results_record_the_prompt_set_and_how_much_of_it_is_constrained(tmp_path):
    extraction = sweep_meta(_sweep(tmp_path, "extraction"), ["m:v"], ["m:v"], {})["config"]
    assert (extraction["prompts"], extraction["prompt_count"], extraction["constrained_prompts"]) == (
        "extraction", len(EXTRACTION), len(EXTRACTION))
    short = sweep_meta(_sweep(tmp_path, "short"), ["m:v"], ["m:v"], {})["config"]
    assert short["prompts"] == "short" and short["constrained_prompts"] == 0


def test_report_and_compare_name_each_runs_prompt_set(tmp_path):
    folders = []
    for name, constrained in (("short", 0), ("extraction", 12)):
        meta = report_records.meta()
        meta["run_id"] = name
        meta["config"].update(prompts=name, prompt_count=12, constrained_prompts=constrained)
        records = report_records.synthetic_records()
        folder = tmp_path / name
        write_report(folder, build_results(meta, records, report_records.COSTS, report_records.SLO, 0.9), records)
        folders.append(folder)
    assert json.loads((folders[1] / "results.json").read_text())["config"]["constrained_prompts"] == 12
    assert "prompts `short`, max_tokens" in (folders[0] / "report.md").read_text()
    assert "prompts `extraction` (12 of 12 with a JSON response_format" in (folders[1] / "report.md").read_text()
    table = compare_runs(folders).split("\n\n")[0].splitlines()[2:]  # the per-variant table, below its header
    rows = [line.strip("| ").split(" | ") for line in table]
    named = {"short": "short", "extraction": "extraction (12/12 constrained)"}
    assert {(run, prompts, variant) for run, prompts, variant, *_ in rows} == {
        (run, prompts, variant) for run, prompts in named.items() for variant in report_records.COSTS}
