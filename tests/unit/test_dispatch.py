"""serving/dispatch.py without Ray: name resolution, readiness from Serve's status, and the order in which a request
goes through its variant and the variant's fallbacks (FallbackChain), with stand-in exceptions for a replica that is
gone or busy (serving.serve_state has Ray Serve's)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.catalog import ServedVariant
from serving.dispatch import FallbackChain, ReplicaFailures, VariantDirectory
from serving.protocol import ApiError


class Gone(Exception):
    pass


class Busy(Exception):
    pass


FAILURES = ReplicaFailures(gone=(Gone,), busy=(Busy,))


def variant(name: str, fallbacks: tuple[str, ...] = (), kind: str = "chat", default: bool = False) -> ServedVariant:
    return ServedVariant(model="m", variant=name, kind=kind, backend="onnx", folder="", format="onnx", bits=4,
                         size_bytes=1, hardware_profile="cpu", price_per_hour=1.0, fallbacks=fallbacks,
                         is_default=default, perplexity=None, max_batch_size=1, max_queue=1, max_context=64,
                         threads=1)


def directory(*, running: set[str], scales_to_zero: set[str] = frozenset()) -> VariantDirectory:
    variants = [variant("int4", ("int8", "fp32"), default=True), variant("int8", ("fp32",)), variant("fp32"),
                variant("embed", kind="embedding")]
    found = VariantDirectory(variants, {v.id: object() for v in variants}, FAILURES,
                             {f"m:{name}" for name in scales_to_zero})
    for state in found.states.values():
        replicas = {"RUNNING": 1} if state.variant.variant in running else {}
        state.observe(SimpleNamespace(replica_states=replicas, status="HEALTHY" if replicas else "UPDATING"))
    return found


def answers(tried: list[str], outcomes: dict[str, BaseException | str]):
    """An `ask` that records each variant asked and raises or returns its outcome."""
    async def ask(state) -> str:
        tried.append(state.variant.variant)
        outcome = outcomes[state.variant.variant]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    return ask


def first_answer(found: VariantDirectory, outcomes: dict, requested: str = "int4") -> tuple[str, list[str], str]:
    tried: list[str] = []
    chain = FallbackChain(found, found.resolve(f"m:{requested}", "chat"))
    answer = asyncio.run(chain.first_answer(answers(tried, outcomes)))
    return answer, tried, chain.current.variant.variant


def test_names_resolve_to_the_default_or_the_named_variant_and_bad_names_say_why():
    found = directory(running={"int4"})
    assert found.resolve("m", "chat").variant.variant == "int4"
    with pytest.raises(ApiError) as unknown:
        found.resolve("m:nope", "chat")
    assert unknown.value.status == 404 and "m:int4" in unknown.value.message
    with pytest.raises(ApiError) as wrong_kind:
        found.resolve("m:embed", "chat")
    assert wrong_kind.value.status == 400 and wrong_kind.value.code == "wrong_model_kind"


def test_serves_status_becomes_readiness():
    found = directory(running={"int4"}, scales_to_zero={"fp32"})
    states = {name: found.states[f"m:{name}"] for name in ("int4", "int8", "fp32")}
    assert [states[n].status for n in ("int4", "int8", "fp32")] == ["running", "updating", "scaled_to_zero"]
    assert states["int4"].ready and not states["int8"].ready and states["fp32"].ready
    states["fp32"].observe(SimpleNamespace(replica_states={}, status="UNHEALTHY"))
    assert states["fp32"].status == "unhealthy" and not states["fp32"].ready
    states["int4"].observe(None)
    assert states["int4"].status == "starting"


def test_the_requested_variant_answers_first():
    assert first_answer(directory(running={"int4", "int8", "fp32"}), {"int4": "a"}) == ("a", ["int4"], "int4")


def test_a_gone_replica_is_marked_and_its_fallbacks_are_tried_in_order():
    found = directory(running={"int4", "int8", "fp32"})
    answer = first_answer(found, {"int4": Gone(), "int8": Busy(), "fp32": "c"})
    assert answer == ("c", ["int4", "int8", "fp32"], "fp32")
    assert found.states["m:int4"].status == "replica_gone"  # not asked again until Serve shows it running
    assert found.states["m:int8"].ready  # busy is not down
    assert first_answer(found, {"int8": "b"}) == ("b", ["int8"], "int8")


def test_variants_that_cannot_answer_now_are_skipped():
    assert first_answer(directory(running={"fp32"}), {"fp32": "c"}) == ("c", ["fp32"], "fp32")


def test_an_overloaded_refusal_passes_the_request_on_and_is_the_answer_when_every_variant_refuses():
    found = directory(running={"int4", "int8", "fp32"})
    full = ApiError(503, "the replica's queue is full; retry shortly", code="overloaded")
    assert first_answer(found, {"int4": full, "int8": "b"})[:2] == ("b", ["int4", "int8"])
    with pytest.raises(ApiError) as refused:
        first_answer(found, {"int4": full, "int8": full, "fp32": full})
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    assert refused.value.message == full.message and refused.value.headers["Retry-After"]


def test_a_client_error_is_the_answer_and_no_fallback_is_asked():
    bad = ApiError(400, "`max_tokens` is too large", param="max_tokens")
    with pytest.raises(ApiError) as refused:
        first_answer(directory(running={"int4", "int8"}), {"int4": bad, "int8": "b"})
    assert refused.value is bad


def test_a_replica_that_raises_on_a_request_is_a_500_not_a_reason_to_avoid_it():
    found = directory(running={"int4", "int8"})
    with pytest.raises(ApiError) as failed:
        first_answer(found, {"int4": RuntimeError("bug"), "int8": "b"})
    assert (failed.value.status, failed.value.code) == (500, "replica_error")
    assert found.states["m:int4"].ready


def test_no_live_variant_is_a_503_with_retry_after():
    with pytest.raises(ApiError) as refused:
        first_answer(directory(running=set()), {})
    assert (refused.value.status, refused.value.code) == (503, "no_healthy_replica")
    assert refused.value.headers["Retry-After"]
