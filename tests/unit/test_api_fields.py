"""The README's table of request fields against the request models: every field of every model is listed, for the
endpoints that have it, with the status the model gives it; every listed field is a model field. A field added to
a model without its line in the README (or the reverse) fails here."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving import protocol as p
from tests.helpers import REPO

HEADING = "### Request fields"
MODELS = {"chat": p.ChatCompletionRequest, "completions": p.CompletionRequest, "embeddings": p.EmbeddingRequest}
NESTED = {"stream_options.": (p.StreamOptions, ("chat", "completions")), "messages[].": (p.ChatMessage, ("chat",))}
STATUSES = {"honoured", "honoured (vLLM extension)", "400"}


def readme_rows() -> dict[tuple[str, str], str]:
    """(field, endpoint) -> status, from the table under HEADING."""
    text = (REPO / "README.md").read_text()
    table = text[text.index(HEADING):].split("\n\n")[2]
    rows = {}
    for line in table.splitlines()[2:]:
        field, endpoints, status, _notes = (cell.strip() for cell in line.strip("|").split("|"))
        assert status in STATUSES, f"{field}: unknown status {status!r}"
        for endpoint in endpoints.split(", "):
            assert (field.strip("`"), endpoint) not in rows, f"{field} is listed twice for {endpoint}"
            rows[(field.strip("`"), endpoint)] = status
    return rows


def status_of(model, name: str) -> str:
    if name in model.fields_marked(p.REFUSED_MARK):
        return "400"
    return "honoured (vLLM extension)" if name in model.fields_marked(p.VLLM_EXTENSION) else "honoured"


def model_rows() -> dict[tuple[str, str], str]:
    rows = {(name, endpoint): status_of(model, name) for endpoint, model in MODELS.items()
            for name in model.model_fields}
    for prefix, (model, endpoints) in NESTED.items():
        rows.update({(prefix + name, endpoint): status_of(model, name) for endpoint in endpoints
                     for name in model.model_fields})
    return rows


def test_every_model_field_is_in_the_readme_with_its_status_and_nothing_else_is():
    documented, declared = readme_rows(), model_rows()
    assert sorted(set(declared) - set(documented)) == [], "fields missing from the README's table"
    assert sorted(set(documented) - set(declared)) == [], "fields in the README's table that no model has"
    assert {k: v for k, v in documented.items() if declared[k] != v} == {}, "statuses that differ"


def test_the_table_lists_openais_fields_that_clients_send():
    documented = {field for field, _ in readme_rows()}
    for field in ("tools", "tool_choice", "response_format", "logit_bias", "suffix", "best_of", "parallel_tool_calls",
                  "functions", "function_call", "audio", "modalities", "prediction", "web_search_options"):
        assert field in documented


@pytest.mark.parametrize(("model", "body"), [
    (p.ChatCompletionRequest, {"messages": [{"role": "user", "content": "hi"}]}),
    (p.CompletionRequest, {"prompt": "hi"}),
])
def test_every_refused_field_is_refused_by_name_and_null_is_the_default(model, body):
    for name in model.fields_marked(p.REFUSED_MARK):
        with pytest.raises(ValidationError) as refused:
            model.model_validate({"model": "m", **body, name: "anything"})
        assert (refused.value.errors()[0]["loc"][0], refused.value.errors()[0]["type"]) in (
            (name, p.UNSUPPORTED), (name, "literal_error"), (name, "bool_type"), (name, "int_type"))
        assert model.model_validate({"model": "m", **body, name: None}) == model.model_validate({"model": "m", **body})


def test_an_unknown_field_is_refused_by_name():
    with pytest.raises(ValidationError) as refused:
        p.CompletionRequest.model_validate({"model": "m", "prompt": "hi", "colour": "blue"})
    assert [(e["loc"], e["type"]) for e in refused.value.errors()] == [(("colour",), "extra_forbidden")]


def test_a_non_text_part_is_refused_naming_its_type():
    body = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                                    {"type": "image_url", "image_url": {"url": "x"}}]}]}
    with pytest.raises(ValidationError) as refused:
        p.ChatCompletionRequest.model_validate(body)
    error = refused.value.errors()[0]
    assert error["type"] == p.UNSUPPORTED and "'image_url'" in error["msg"]
    assert error["loc"] == ("messages", 0, "content")

