"""serving/output_buffer.py: outputs that piled up while the writer was busy come out as one per choice; a failure
comes after what was put before it; a buffer whose choices all ended gives an empty take."""

from __future__ import annotations

import asyncio

import pytest

from serving.engines.base import GenerationOutput
from serving.output_buffer import OutputBuffer
from serving.protocol import ApiError


def output(text: str, completion_tokens: int, finish_reason: str | None = None) -> GenerationOutput:
    return GenerationOutput(text=text, token_ids=[completion_tokens], prompt_tokens=3,
                            completion_tokens=completion_tokens, finish_reason=finish_reason)


def test_outputs_put_between_takes_are_merged_per_choice_in_order_of_arrival() -> None:
    async def scenario() -> list:
        buffer = OutputBuffer(2)
        buffer.put(1, output("a", 1))
        buffer.put(0, output("x", 1))
        buffer.put(1, output("b", 2))
        buffer.put(1, output("c", 3, "stop"))
        return await buffer.take()

    taken = asyncio.run(scenario())
    assert [index for index, _ in taken] == [1, 0]
    merged = taken[0][1]
    assert (merged.text, merged.token_ids, merged.completion_tokens, merged.finish_reason) == ("abc", [1, 2, 3], 3,
                                                                                               "stop")
    assert taken[1][1].text == "x"


def test_a_take_waits_for_an_output_and_ends_empty_when_every_choice_ended() -> None:
    async def scenario() -> list:
        buffer = OutputBuffer(1)
        waiting = asyncio.ensure_future(buffer.take())
        await asyncio.sleep(0)
        assert not waiting.done()
        buffer.put(0, output("a", 1))
        first = await waiting
        buffer.end(0)
        return [first, await buffer.take()]

    first, last = asyncio.run(scenario())
    assert [o.text for _, o in first] == ["a"] and last == []


def test_a_failure_is_raised_after_what_came_before_it_and_the_first_one_wins() -> None:
    async def scenario() -> list:
        buffer = OutputBuffer(1)
        buffer.put(0, output("a", 1))
        buffer.fail(ApiError(504, "late", code="timeout"))
        buffer.fail(ApiError(502, "gone", code="replica_failed"))
        taken = await buffer.take()
        with pytest.raises(ApiError) as raised:
            await buffer.take()
        return [taken, raised.value]

    taken, error = asyncio.run(scenario())
    assert [o.text for _, o in taken] == ["a"] and error.status == 504
