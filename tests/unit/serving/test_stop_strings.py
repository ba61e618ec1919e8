"""A row's text as the hf engine streams it (``scheduler.Job.take``): stop strings that span tokens never leak in
part, stop strings are looked for in new text only (not below ``min_tokens``), a tiny temperature is greedy, and a
client whose event loop is gone cancels its row instead of failing the step."""

from __future__ import annotations

import asyncio

from runtime.engines.base import EngineRequest, SamplingParams, StreamDelta
from runtime.engines.scheduler import Job

EOS = 0


class Chars:
    """A tokenizer whose token ``i`` is the character ``chr(i)``: one character a step."""

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


def _stream(text: str, **params) -> list[StreamDelta]:
    """Feed ``text`` a character a step (then EOS, unless the row ended); the deltas it sent."""
    async def run() -> list[StreamDelta]:
        request = EngineRequest("j", SamplingParams(**{"max_new_tokens": 64} | params))
        job = Job(request, [1], asyncio.get_running_loop())
        for ch in text:
            job.take(ord(ch), Chars(), {EOS})
            if job.done:
                break
        else:
            job.take(EOS, Chars(), {EOS})
        await asyncio.sleep(0)
        return [job.queue.get_nowait() for _ in range(job.queue.qsize())]

    return asyncio.run(run())


def test_a_stop_string_that_spans_tokens_is_never_sent_in_part():
    deltas = _stream("x = f(a)</code> and more", stop=("</code>",))
    assert "".join(d.text for d in deltas) == "x = f(a)" and deltas[-1].finish_reason == "stop"
    assert not any("<" in d.text for d in deltas)  # no piece of the stop string went out before it was whole


def test_without_a_stop_string_every_character_is_sent_as_it_comes():
    deltas = _stream("abc")
    assert [d.text for d in deltas] == ["a", "b", "c", ""] and deltas[-1].finish_reason == "stop"


def test_held_back_text_is_sent_when_the_row_ends_without_its_stop():
    deltas = _stream("ab<", stop=("<end>",))
    assert "".join(d.text for d in deltas) == "ab<" and deltas[-1].finish_reason == "stop"  # EOS: all of it
    cut = _stream("ab<en", stop=("<end>",), max_new_tokens=5)
    assert "".join(d.text for d in cut) == "ab<en" and cut[-1].finish_reason == "length"


def test_a_stop_string_decoded_below_min_tokens_is_not_matched_later():
    deltas = _stream("ab-ab-more", stop=("ab",), min_tokens=3)  # "ab" at 0 is below the floor; the next at 3 stops
    assert "".join(d.text for d in deltas) == "ab-" and deltas[-1].finish_reason == "stop"
    fixed = _stream("ab-ab-", stop=("ab",), ignore_eos=True, max_new_tokens=6)  # never stops early: no "stop"
    assert "".join(d.text for d in fixed) == "ab-ab-" and fixed[-1].finish_reason == "length"


def test_a_temperature_below_vllms_epsilon_is_greedy():
    assert SamplingParams(temperature=1e-40).greedy and SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=1e-4).greedy


def test_a_row_whose_client_loop_closed_is_cancelled_not_an_error():
    loop = asyncio.new_event_loop()
    job = Job(EngineRequest("j", SamplingParams()), [1], loop)
    loop.close()
    job.take(ord("a"), Chars(), {EOS})  # would raise "Event loop is closed" inside the engine's step
    assert job.cancelled
