"""The grammar benchmark (loadtest.bench.grammar): its probes say what they claim (checked by an independent JSON
Schema validator, jsonschema-rs), and a quick run on llguidance measures every workload and renders its report."""

import json

import jsonschema_rs
import pytest

from loadtest.bench.grammar import PLAN, bench_library
from loadtest.bench.grammar_libraries import Llguidance
from loadtest.bench.grammar_probes import PROBES, WORKLOADS
from loadtest.bench.grammar_report import render_grammar_report
from tests.helpers.small_tokenizer import END_OF_SEQUENCE, unit_tokenizer

REFUSED_IN_STRICT_MODE = {"uniqueItems", "contains", "propertyNames", "dependentRequired", "not", "if, then, else"}


@pytest.mark.parametrize("probe", PROBES, ids=[p.keyword for p in PROBES])
def test_each_probe_has_a_valid_and_an_invalid_instance(probe):
    validator = jsonschema_rs.validator_for(probe.schema, validate_formats=True)
    assert validator.is_valid(json.loads(probe.valid))
    assert not validator.is_valid(json.loads(probe.invalid))


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_each_workload_document_validates(workload):
    assert jsonschema_rs.validator_for(workload.schema).is_valid(json.loads(workload.document))


def test_a_quick_llguidance_run_measures_every_workload_and_reports_it():
    tokenizer = unit_tokenizer()
    result = bench_library(Llguidance(tokenizer, tokenizer.token_to_id(END_OF_SEQUENCE)), tokenizer, PLAN["quick"])
    for workload in WORKLOADS:
        measured = result["workloads"][workload.name]
        assert "error" not in measured["one_stream"], measured
        assert measured["one_stream"]["p50_us"] > 0 and measured["many_streams"]["step_p50_us"] > 0
    statuses = {keyword: found["status"] for keyword, found in result["coverage"].items()}
    assert {k for k, status in statuses.items() if status != "enforced"} == REFUSED_IN_STRICT_MODE
    report = render_grammar_report({"machine": {}, "versions": {}, "vocab_size": tokenizer.get_vocab_size(),
                                    "plan": PLAN["quick"], "libraries": {"llguidance": result}})
    assert f"**{len(PROBES) - len(REFUSED_IN_STRICT_MODE)} of {len(PROBES)}**" in report
    assert all(workload.name in report for workload in WORKLOADS)
