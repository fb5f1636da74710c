"""Locust users that speak the OpenAI API to quantserve (or any OpenAI-compatible server) and measure it.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m:onnx-int4
    locust -f loadtest/locustfile.py,loadtest/shapes.py --headless --levels 1,2,4 --model ...   # a sweep

ChatStreamUser streams chat completions and fires its own request types beside the HTTP one (whose time is
only time-to-headers): TTFT, ITL (mean time per output token after the first) and E2E, plus SLO (a failure
when a request misses `--slo-ttft-ms` / `--slo-itl-ms`). EmbeddingsUser posts to /v1/embeddings.
Each request becomes one row of `--records-csv`. Only classes whose model is given run.
"""

# isort: off
import locust  # noqa: F401  # first: gevent must patch the standard library before ssl/urllib3 load
# isort: on

import logging
import random
import sys
import time

import gevent
import requests
from locust import HttpUser, constant, events, task

from loadtest.records import RequestRecord, open_writer, to_row
from loadtest.sse import error_message, mean_itl_ms, parse_stream, usage_problem
from loadtest.workload import load_prompt_set, output_length_sampler
from quantserve.constants import VARIANT_HEADER

IDLE_S = 0.2
log = logging.getLogger("quantserve.loadtest")


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("quantserve workload")
    group.add_argument("--model", default="", help="chat model id, MODEL or MODEL:VARIANT (runs ChatStreamUser)")
    group.add_argument("--embedding-model", default="", help="embedding model id (runs EmbeddingsUser)")
    group.add_argument("--prompts", default="short", help="prompt set: short, long, mix or a JSONL path")
    group.add_argument("--max-tokens", default="64",
                       help="output length: N, uniform:LO:HI, normal:MEAN:SD or exp:MEAN (sent as max_tokens)")
    group.add_argument("--ignore-eos", action="store_true", help="ask the server to ignore EOS (vLLM extension)")
    group.add_argument("--temperature", type=float, default=0.0)
    group.add_argument("--slo-ttft-ms", type=float, default=0, help="TTFT bound of the SLO (0: none)")
    group.add_argument("--slo-itl-ms", type=float, default=0, help="mean inter-token latency bound (0: none)")
    group.add_argument("--records-csv", default="", help="write one row per request to this CSV file")
    group.add_argument("--max-requests", type=int, default=0, help="stop after sending this many requests (0: no cap)")
    group.add_argument("--request-timeout", type=float, default=120, help="seconds to wait for a response")
    group.add_argument("--run-label", default="", help="label stored with every record (the CLI: the variant)")
    group.add_argument("--seed", type=int, default=0, help="seed for prompt and output length choices")


class RunState:
    """What every user of one Locust process shares: the workload, the request budget and the records file."""

    def __init__(self, environment) -> None:
        options = environment.parsed_options
        self.environment = environment
        self.options = options
        self.rng = random.Random(options.seed)
        self.prompts = load_prompt_set(options.prompts)
        self.sample_max_tokens = output_length_sampler(str(options.max_tokens), self.rng)
        self.sent = 0
        self.stopping = False
        self._file = open(options.records_csv, "w", newline="") if options.records_csv else None  # noqa: SIM115
        self._writer = open_writer(self._file) if self._file else None

    def take_request(self) -> bool:
        """Count one request against `--max-requests`; False (and stop the test) once it is spent."""
        cap = self.options.max_requests
        if cap and self.sent >= cap:
            if not self.stopping:
                self.stopping = True
                log.info("sent %d requests (--max-requests): stopping", self.sent)
                runner = self.environment.runner
                gevent.spawn(runner.quit if self.options.headless else runner.stop)
            return False
        self.sent += 1
        return True

    def write(self, record: RequestRecord) -> None:
        if self._writer:
            self._writer.writerow(to_row(record))
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = self._writer = None


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    options = environment.parsed_options
    if options is None:
        return
    wanted = {"ChatStreamUser": bool(options.model), "EmbeddingsUser": bool(options.embedding_model)}
    if not any(wanted.values()):
        sys.exit("quantserve locustfile: pass --model MODEL[:VARIANT] and/or --embedding-model MODEL")
    environment.user_classes = [cls for cls in environment.user_classes if wanted.get(cls.__name__, True)]
    environment.quantserve_run = RunState(environment)


@events.quitting.add_listener
def _on_quitting(environment, **_kwargs) -> None:
    run = getattr(environment, "quantserve_run", None)
    if run:
        run.close()


class OpenAIUser(HttpUser):
    """Shared parts: pacing (Poisson arrivals from the rate shape), records, and Locust events."""

    abstract = True
    wait_time = constant(0)  # rate mode paces inside the task, so the first request of a user is paced too

    @property
    def shared(self) -> RunState:
        return self.environment.quantserve_run

    def _ready(self) -> bool:
        """Wait for the next arrival (rate mode); False when the plan is over or the request budget is spent."""
        shape = self.environment.shape_class
        arrivals = getattr(shape, "arrivals", None)
        if arrivals is not None:
            gevent.sleep(max(0.0, arrivals.take() - time.monotonic()))
        plan_over = hasattr(shape, "state_now") and shape.state_now() is None
        if plan_over or not self.shared.take_request():
            gevent.sleep(IDLE_S)  # the runner stops this user within a second; do not spin until then
            return False
        return True

    def _new_record(self, endpoint: str, model: str, prompt_id: str, max_tokens: int) -> RequestRecord:
        shape = self.environment.shape_class
        state = shape.state_now() if hasattr(shape, "state_now") else None
        record = RequestRecord(endpoint=endpoint, model=model, prompt_id=prompt_id, max_tokens=max_tokens,
                               run_label=self.shared.options.run_label, start_s=time.time())
        if state is None:
            record.level = self.environment.runner.user_count
        else:
            record.mode, record.level, record.phase = state.step.mode, state.step.level, state.phase
        return record

    def _fire(self, request_type: str, name: str, ms: float, exception: Exception | None = None) -> None:
        self.environment.events.request.fire(request_type=request_type, name=name, response_time=ms,
                                             response_length=0, exception=exception, context={})

    def _finish(self, record: RequestRecord) -> None:
        record.end_s = time.time()
        self.shared.write(record)


class ChatStreamUser(OpenAIUser):
    @task
    def chat(self) -> None:
        if not self._ready():
            return
        options = self.shared.options
        prompt = self.shared.rng.choice(self.shared.prompts)
        max_tokens = self.shared.sample_max_tokens()
        body = {"model": options.model, "messages": prompt.messages, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": options.temperature}
        if options.ignore_eos:
            body["ignore_eos"] = True
        record = self._new_record("chat", options.model, prompt.id, max_tokens)
        started = time.perf_counter()
        with self.client.post("/v1/chat/completions", json=body, stream=True, catch_response=True,
                              name=f"chat {options.model}", timeout=(5, options.request_timeout)) as response:
            self._read_stream(response, record, started)
        self._finish(record)
        if record.ok:
            self._fire_latencies(record)

    def _read_stream(self, response, record: RequestRecord, started: float) -> None:
        if not _accepted(response, record):
            return
        try:
            result = parse_stream((time.perf_counter(), line) for line in response.iter_lines())
        except requests.RequestException as exc:
            record.error = f"stream broken: {type(exc).__name__}: {exc}"[:300]
            response.failure(record.error)
            return
        _measure(record, result, started)
        if record.error:
            response.failure(record.error)
        else:
            response.success()

    def _fire_latencies(self, record: RequestRecord) -> None:
        name = record.model
        self._fire("TTFT", name, record.ttft_ms)
        self._fire("E2E", name, record.e2e_ms)
        if record.itl_ms is not None:
            self._fire("ITL", name, record.itl_ms)
        miss = _slo_miss(record, self.shared.options)
        self._fire("SLO", name, record.e2e_ms, exception=RuntimeError(miss) if miss else None)


class EmbeddingsUser(OpenAIUser):
    @task
    def embed(self) -> None:
        if not self._ready():
            return
        model = self.shared.options.embedding_model
        prompt = self.shared.rng.choice(self.shared.prompts)
        record = self._new_record("embeddings", model, prompt.id, 0)
        started = time.perf_counter()
        with self.client.post("/v1/embeddings", json={"model": model, "input": prompt.text}, catch_response=True,
                              name=f"embeddings {model}", timeout=(5, self.shared.options.request_timeout)) as response:
            record.e2e_ms = (time.perf_counter() - started) * 1000
            _read_embeddings(response, record)
        self._finish(record)


def _measure(record: RequestRecord, result, started: float) -> None:
    usage = result.usage or {}
    record.chunks, record.finish_reason = result.chunks, result.finish_reason
    record.prompt_tokens, record.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    record.total_tokens = usage.get("total_tokens")
    record.e2e_ms = (time.perf_counter() - started) * 1000
    if result.first_token_s is not None:
        record.ttft_ms = (result.first_token_s - started) * 1000
        record.itl_ms = mean_itl_ms(result, record.output_tokens)
        record.itl_max_ms = max(result.gaps_ms, default=None)
    problem = usage_problem(result, record.max_tokens)
    record.usage_checked = not problem
    if result.error:
        record.error = f"stream error: {result.error}"
    elif not result.done:
        record.error = "stream ended before [DONE]"
    elif problem:
        record.error = f"usage: {problem}"
    record.ok = not record.error


def _accepted(response, record: RequestRecord) -> bool:
    """Record the status and the answering variant; a non-200 is recorded as the request's error."""
    record.status = response.status_code or 0
    if record.status != 200:
        record.error = _http_error(response)
        response.failure(record.error)
        return False
    record.variant = response.headers.get(VARIANT_HEADER, "")
    return True


def _read_embeddings(response, record: RequestRecord) -> None:
    if not _accepted(response, record):
        return
    body = response.json()
    usage = body.get("usage") or {}
    record.prompt_tokens, record.total_tokens = usage.get("prompt_tokens"), usage.get("total_tokens")
    record.output_tokens = 0
    vectors = [item.get("embedding") for item in body.get("data") or []]
    record.usage_checked = isinstance(record.prompt_tokens, int)
    record.error = "" if len(vectors) == 1 and vectors[0] else f"expected 1 embedding, got {len(vectors)}"
    record.ok = not record.error
    response.success() if record.ok else response.failure(record.error)


def _http_error(response) -> str:
    """The server's own error message, or why no response came."""
    if not response.status_code:
        return f"no response: {getattr(response, 'error', None) or 'connection failed'}"[:300]
    try:
        return f"HTTP {response.status_code}: {error_message(response.json())}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


def _slo_miss(record: RequestRecord, options) -> str:
    if options.slo_ttft_ms and record.ttft_ms > options.slo_ttft_ms:
        return f"TTFT {record.ttft_ms:.0f} ms > {options.slo_ttft_ms:g} ms"
    if options.slo_itl_ms and record.itl_ms is not None and record.itl_ms > options.slo_itl_ms:
        return f"ITL {record.itl_ms:.1f} ms > {options.slo_itl_ms:g} ms"
    return ""
