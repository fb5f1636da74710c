"""Who gets in: API keys, per-key rate limits (token buckets on a hand-moved clock) and the admission policy."""

from __future__ import annotations

import asyncio

import pytest

from quantserve.config import AuthConfig, ConfigError, LimitsConfig, RateLimitConfig
from serving import protocol as p
from serving.admission import AdmissionPolicy, BodyTooLarge, RequestGate, read_body, replaying
from serving.auth import ANONYMOUS, ApiKey, ApiKeys, key_id, read_keys
from serving.rate_limits import RateLimiter
from tests.helpers import HandClock

# --- API keys --------------------------------------------------------------------------------------


def test_no_keys_means_everyone_is_anonymous():
    keys = ApiKeys([])
    assert not keys.enabled and keys.authenticate(None) == ANONYMOUS


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-one", "sk-one"])
def test_a_missing_or_malformed_key_is_401(header):
    with pytest.raises(p.ApiError) as refused:
        ApiKeys([ApiKey("sk-one")]).authenticate(header)
    assert refused.value.status == 401 and refused.value.code == "invalid_api_key"
    assert refused.value.headers["WWW-Authenticate"] == "Bearer"


def test_a_wrong_key_is_401_and_the_message_does_not_echo_it():
    with pytest.raises(p.ApiError) as refused:
        ApiKeys([ApiKey("sk-one")]).authenticate("Bearer sk-guess")
    assert "sk-guess" not in refused.value.message


def test_a_right_key_gives_its_id_which_does_not_reveal_it():
    keys = ApiKeys([ApiKey("sk-one"), ApiKey("sk-two")])
    assert keys.authenticate("Bearer sk-two") == keys.authenticate("bearer  sk-two") == key_id("sk-two")
    assert key_id("sk-one") != key_id("sk-two") and "sk-" not in key_id("sk-one").removeprefix("key-")


def test_keys_come_from_the_environment_and_the_file_with_per_key_limits(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# team keys\nsk-file\n\nsk-batch  requests_per_minute=30 tokens_per_minute=500\n")
    keys = read_keys(AuthConfig(api_keys_env="TEST_KEYS", api_keys_file=str(path)), {"TEST_KEYS": "sk-a, sk-b,"})
    assert [k.secret for k in keys] == ["sk-a", "sk-b", "sk-file", "sk-batch"]
    assert keys[-1].limits == {"requests_per_minute": "30", "tokens_per_minute": "500"}
    assert ApiKeys(keys).limits == {key_id("sk-batch"): keys[-1].limits}


def test_a_bad_option_in_the_keys_file_names_the_line_not_the_key(tmp_path):
    path = tmp_path / "keys"
    path.write_text("sk-fine\nsk-secret-value requests_per_minute=-3\n")
    with pytest.raises(ConfigError) as error:
        read_keys(AuthConfig(api_keys_file=str(path)), {})
    assert "line 2" in str(error.value) and "requests_per_minute" in str(error.value)
    assert "sk-secret-value" not in str(error.value)


def test_a_missing_keys_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="api_keys_file"):
        read_keys(AuthConfig(api_keys_file=str(tmp_path / "absent")), {})


# --- rate limits -----------------------------------------------------------------------------------


def test_no_limits_lets_everything_in_without_headers():
    limiter = RateLimiter(RateLimitConfig())
    assert all(limiter.admit("k") == {} for _ in range(1000))


def test_requests_per_minute_refuse_then_refill():
    clock = HandClock()
    limiter = RateLimiter(RateLimitConfig(requests_per_minute=6), clock=clock)  # one request per 10 s
    remaining = [limiter.admit("k")["x-ratelimit-remaining-requests"] for _ in range(6)]
    assert remaining == ["5", "4", "3", "2", "1", "0"]
    with pytest.raises(p.ApiError) as refused:
        limiter.admit("k")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "10"
    clock.now += 4
    with pytest.raises(p.ApiError) as again:
        limiter.admit("k")
    assert again.value.headers["Retry-After"] == "6"
    clock.now += 6
    assert limiter.admit("k")["x-ratelimit-limit-requests"] == "6"
    assert limiter.admit("other")  # every key has its own bucket


def test_tokens_per_minute_are_charged_after_the_fact_and_may_go_into_debt():
    clock = HandClock()
    limiter = RateLimiter(RateLimitConfig(tokens_per_minute=600), clock=clock)  # 10 tokens per second
    limiter.admit("k")
    limiter.charge("k", 900)  # a long answer: 300 tokens of debt
    with pytest.raises(p.ApiError) as refused:
        limiter.admit("k")
    assert "tokens per minute" in refused.value.message and refused.value.headers["Retry-After"] == "31"
    clock.now += 31
    assert limiter.admit("k")["x-ratelimit-remaining-tokens"] == "10"


def test_per_key_limits_override_the_default():
    limiter = RateLimiter(RateLimitConfig(requests_per_minute=100), {"slow": {"requests_per_minute": "1"}},
                          clock=HandClock())
    limiter.admit("slow")
    with pytest.raises(p.ApiError):
        limiter.admit("slow")
    assert all(limiter.admit("fast") for _ in range(50))


# --- the policy ------------------------------------------------------------------------------------


def policy(keys: list[str] = (), **limits) -> AdmissionPolicy:
    return AdmissionPolicy(ApiKeys([ApiKey(k) for k in keys]), RateLimiter(RateLimitConfig(**limits)),
                           LimitsConfig())


def test_the_policy_checks_the_key_and_returns_its_id_and_headers():
    key, headers = asyncio.run(policy(["sk-one"], requests_per_minute=10).admit(
        "GET", {"authorization": "Bearer sk-one"}))
    assert key == key_id("sk-one") and headers["x-ratelimit-remaining-requests"] == "9"


def test_a_body_over_the_limit_is_413_before_the_key_is_looked_at():
    with pytest.raises(p.ApiError) as refused:
        asyncio.run(policy(["sk-one"]).admit("POST", {"content-length": str(10**7)}))
    assert refused.value.status == 413


def test_a_draining_server_turns_requests_away_with_503():
    gate = policy()
    gate.draining = True
    with pytest.raises(p.ApiError) as refused:
        asyncio.run(gate.admit("GET", {}))
    assert refused.value.status == 503 and refused.value.code == "shutting_down"
    assert int(refused.value.headers["Retry-After"]) > 0


# --- the queue in front of the router and chunked bodies ---------------------------------------------


def test_the_gate_lets_in_its_places_queues_the_next_and_refuses_past_the_queue():
    async def scenario():
        gate = RequestGate(concurrent=1, queued=1)
        await gate.enter()
        queued = asyncio.create_task(gate.enter())
        await asyncio.sleep(0)
        assert gate.waiting == 1 and not queued.done()
        with pytest.raises(p.ApiError) as refused:
            await gate.enter()
        assert refused.value.status == 503 and refused.value.code == "queue_full"
        assert int(refused.value.headers["Retry-After"]) > 0
        gate.leave()
        await asyncio.wait_for(queued, 1)  # the queued one gets the place that was freed
        gate.leave()

    asyncio.run(scenario())


def body_messages(chunks: list[bytes]):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def test_a_chunked_body_is_counted_as_it_arrives():
    async def scenario():
        assert await read_body(body_messages([b"ab", b"cd"]), limit=4) == b"abcd"
        with pytest.raises(BodyTooLarge):
            await read_body(body_messages([b"ab", b"cd", b"e", b"never read"]), limit=4)
        replay = replaying(b"abcd", body_messages([]))
        assert (await replay())["body"] == b"abcd" and (await replay())["type"] == "http.disconnect"

    asyncio.run(scenario())
