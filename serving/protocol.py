"""Every OpenAI wire type quantserve speaks, in one place.

Requests are strict, as OpenAI's API is: known fields are strict about their JSON types (`"echo": 0` or
`"max_tokens": "16"` is a 400, not silently converted); an explicit `null` for an optional field means its default
(the OpenAI SDK, LangChain and many proxies send nulls for unset fields); an unknown field is a 400 naming it; and so
is a field of OpenAI's API this server does not implement (`Unsupported`), with code `unsupported_parameter`, so that
no request is answered as if it had been honoured. The README's API section lists every field with its status (a
unit test keeps the two in step). Each request converts itself into engine parameters with one method.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serving.chat_constraints import ChatConstraints
from serving.engines.grammar import ConstraintError, parse_logit_bias

# --- errors -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """The one error type of a request, wherever it is found: the router's checks, the replica or the engine (its
    `EngineError` subclass). A replica yields it in its output stream; the router answers it with OpenAI's error
    body, the status and the headers (serving.responses: a JSON response, or an error event once a stream began).
    """

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable", 504: "timeout"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return ErrorResponse(error=ErrorDetail(message=self.message, type=kind, param=self.param,
                                               code=self.code)).model_dump()

    def __reduce__(self):  # a replica sends it to the router pickled; Exception's own pickling keeps `args` only
        return type(self), (self.status, self.message, self.param, self.code, self.headers)


# --- shared pieces ------------------------------------------------------------------------------


def _unicode(value: str) -> str:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer (or UTF-8 encoder) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text is not valid Unicode (it holds a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]


UNSUPPORTED = "unsupported_parameter"  # the pydantic error type and the API error code of a refused field


def refuse(reason: str):
    """A validator for a field this server does not implement: any value it is given is a 400 naming the field."""
    def check(value):
        raise PydanticCustomError(UNSUPPORTED, reason)
    return AfterValidator(check)


REFUSED_MARK = {"x-quantserve": "refused"}  # refused when set (or, for a few, when set to other than the default)
VLLM_EXTENSION = {"x-quantserve": "vllm-extension"}  # not in OpenAI's API: vLLM's, honoured as vLLM does


def Unsupported(reason: str):  # noqa: N802 (used as a type)
    """An OpenAI field that is refused whenever it is set (null, like absence, asks for nothing)."""
    return Annotated[Any, refuse(reason), Field(None, description=f"Not supported: a 400 ({UNSUPPORTED}). {reason}",
                                                json_schema_extra=REFUSED_MARK)]


SCHEMA_NOTES = ("title", "description", "default", "examples", "deprecated", "x-quantserve")


def _optional_fields_take_null(schema: dict[str, Any], _model: type) -> None:
    """The published schema says what the validator does: an optional field also takes null (its default)."""
    required = set(schema.get("required", ()))
    for name, field in schema.get("properties", {}).items():
        if name in required or _takes_null(field):
            continue
        notes = {key: field.pop(key) for key in SCHEMA_NOTES if key in field}
        branch = dict(field)
        field.clear()
        field.update(notes, anyOf=[branch, {"type": "null"}])


def _takes_null(field: dict[str, Any]) -> bool:
    branches = field.get("anyOf", [field])
    return not set(field) - set(SCHEMA_NOTES) or any(branch.get("type") == "null" for branch in branches)


class WireModel(BaseModel):
    """A request object: strict types, unknown fields refused, explicit null = the field's default."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_optional_fields_take_null)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}

    @classmethod
    def fields_marked(cls, mark: dict) -> set[str]:
        """The fields carrying `mark` (REFUSED_MARK, VLLM_EXTENSION) in their schema."""
        return {name for name, field in cls.model_fields.items() if field.json_schema_extra == mark}


class StreamOptions(WireModel):
    include_usage: bool = False
    include_obfuscation: bool = Field(False, description="Only false: this server does not pad stream events",
                                      json_schema_extra=REFUSED_MARK)

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, value: bool) -> bool:
        if value:
            raise PydanticCustomError(UNSUPPORTED, "stream events are not obfuscated by this server; send false")
        return value


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens the replica's prefix cache supplied instead of computing them


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None  # null where the backend has no prefix cache


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


NOT_STORED = "this server stores no completions"
LEGACY_FUNCTIONS = "deprecated by OpenAI: send tools and tool_choice"
TEXT_ONLY = "this server serves text-only models"
INVALID_CONSTRAINT = "invalid_constraint"  # a response_format, tool or logit_bias that cannot be honoured (400)


def refused_constraint(refused: ConstraintError) -> PydanticCustomError:
    """A 400 naming the field (the router reads `param` from the error's context)."""
    return PydanticCustomError(INVALID_CONSTRAINT, "{message}", {"message": refused.message, "param": refused.param})


class SamplingFields(WireModel):
    """Fields shared by chat and text completions."""

    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)  # vLLM's bound; each engine maps it to its range
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = Field(None, description="Logged with the request")
    logit_bias: dict[str, float] | None = Field(None, description="token id -> bias in [-100, 100], added to the logit")
    # vLLM's sampling extensions, with vLLM's bounds
    top_k: int | None = Field(None, ge=-1, description="0 or -1: off", json_schema_extra=VLLM_EXTENSION)
    min_p: float = Field(0.0, ge=0, le=1, json_schema_extra=VLLM_EXTENSION)
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False, json_schema_extra=VLLM_EXTENSION)
    min_tokens: int = Field(0, ge=0, json_schema_extra=VLLM_EXTENSION)
    ignore_eos: bool = Field(False, json_schema_extra=VLLM_EXTENSION)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value: dict[str, float]) -> dict[str, float]:
        try:
            parse_logit_bias(value)
        except ConstraintError as refused:
            raise refused_constraint(refused) from None
        return value

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None,
                        prompt_logprobs: int | None = None) -> dict:
        """Engine parameters (see serving.engines.base.SamplingParams, which checks how they combine)."""
        return {
            "max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p,
            "top_k": self.top_k if self.top_k and self.top_k > 0 else None, "seed": self.seed,
            "stop": list(self.stop or []), "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty, "logprobs": logprobs, "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty, "min_tokens": self.min_tokens, "ignore_eos": self.ignore_eos,
            "prompt_logprobs": prompt_logprobs, "logit_bias": parse_logit_bias(self.logit_bias),
        }


# --- chat completions ---------------------------------------------------------------------------


class TextPart(WireModel):
    type: Literal["text"]
    text: Text


class FunctionCall(WireModel):
    name: Text
    arguments: Text  # JSON text


class MessageToolCall(WireModel):
    """A call in an assistant message of the history."""

    id: Text
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(WireModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[TextPart] | None = None
    name: Unsupported("this model's chat template has no place for participant names")
    refusal: Unsupported("earlier refusals cannot be rendered into this model's prompt")
    audio: Unsupported(TEXT_ONLY)
    tool_calls: list[MessageToolCall] | None = Field(None, description="An assistant's calls, rendered for the model")
    tool_call_id: Text | None = Field(None, description="The call a tool message answers")
    function_call: Unsupported(LEGACY_FUNCTIONS)

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise PydanticCustomError(UNSUPPORTED, "content parts of type '{kind}' are not supported: " + TEXT_ONLY,
                                          {"kind": kind})
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, Any]:
        """The message as serving.chat_constraints renders it: role, text, and the tool fields when present."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class JsonSchemaFormat(WireModel):
    name: Text = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="JSON Schema; absent: any JSON object")
    strict: bool = Field(False, description="true: keywords that cannot be enforced are a 400 naming them")


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise PydanticCustomError("invalid_combination", "json_schema goes with type json_schema, and only there",
                                      {"param": "response_format"})
        return self

    def as_json(self) -> dict[str, Any]:
        if self.json_schema is None:
            return {"type": self.type}
        spec = self.json_schema
        return {"type": self.type, "json_schema": {"name": spec.name, "strict": spec.strict,
                                                   "schema": {"type": "object"} if spec.schema_ is None
                                                   else spec.schema_}}


class FunctionDefinition(WireModel):
    name: Text = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(None, description="JSON Schema of the arguments; absent: any object")
    strict: bool = Field(False, description="true: keywords that cannot be enforced are a 400 naming them")


class Tool(WireModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(WireModel):
    name: Text


class NamedToolChoice(WireModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    safety_identifier: str | None = Field(None, description="Logged with the request, like `user`")
    store: bool = Field(False, description=f"Only false: {NOT_STORED}", json_schema_extra=REFUSED_MARK)
    service_tier: Literal["auto", "default"] | None = Field(None, description="This server has one tier",
                                                            json_schema_extra=REFUSED_MARK)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    functions: Unsupported(LEGACY_FUNCTIONS)
    function_call: Unsupported(LEGACY_FUNCTIONS)
    audio: Unsupported(TEXT_ONLY)
    modalities: Unsupported(TEXT_ONLY)
    prediction: Unsupported("predicted outputs (speculative decoding from a given text) are not implemented")
    web_search_options: Unsupported("this server has no web search")
    reasoning_effort: Unsupported("the served models do not reason in a separate channel")
    verbosity: Unsupported("the served models have no verbosity control")
    metadata: Unsupported(NOT_STORED)
    prompt_cache_key: Unsupported("this server has no prompt cache")
    prompt_cache_options: Unsupported("this server has no prompt cache")
    prompt_cache_retention: Unsupported("this server has no prompt cache")
    moderation: Unsupported("this server runs no moderation")

    @field_validator("store")
    @classmethod
    def _nothing_stored(cls, value: bool) -> bool:
        if value:
            raise PydanticCustomError(UNSUPPORTED, NOT_STORED + "; send false")
        return value

    @field_validator("service_tier", mode="before")
    @classmethod
    def _one_tier(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("auto", "default"):
            raise PydanticCustomError(UNSUPPORTED, "this server has one service tier: auto or default")
        return value

    _constraints: ChatConstraints = PrivateAttr(default_factory=ChatConstraints)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    @model_validator(mode="after")
    def _constraints_that_can_be_honoured(self) -> ChatCompletionRequest:
        """response_format, tools and tool_choice, checked here so that what cannot be honoured is a 400."""
        tools = [tool.model_dump() for tool in self.tools or []]
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        response_format = self.response_format.as_json() if self.response_format else None
        try:
            self._constraints = ChatConstraints.from_request(response_format, tools, choice, self.parallel_tool_calls)
        except ConstraintError as refused:
            raise refused_constraint(refused) from None
        return self

    @property
    def constraints(self) -> ChatConstraints:
        return self._constraints

    def to_sampling_params(self) -> dict:
        limit = self.max_completion_tokens or self.max_tokens
        return {**self.sampling_params(limit, (self.top_logprobs or 0) if self.logprobs else None),
                "constraint": self._constraints.constraint}


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


ChatFinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: ChatFinishReason | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed call: the first delta of call `index` has its id, type and name (here also all its arguments)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: ChatFinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- text completions ---------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: Text | list[Text] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=0, description="0 with echo: the prompt scored, nothing generated")
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, description="Only 1: ask for n choices instead",
                                json_schema_extra=REFUSED_MARK)
    suffix: Unsupported("insertion (fill in the middle) is not implemented")

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, value: int) -> int:
        if value > 1:
            raise PydanticCustomError(UNSUPPORTED, "best_of above 1 is not supported (nor is it by vLLM); ask for n "
                                      "choices and pick among them")
        return value

    @model_validator(mode="after")
    def _nothing_generated_only_with_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise PydanticCustomError("invalid_combination", "max_tokens 0 scores the prompt: it needs echo=true",
                                      {"param": "max_tokens"})
        return self

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request is supported")
        if not (value if isinstance(value, str) else value[0]):
            raise ValueError("the prompt must not be empty")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def to_sampling_params(self) -> dict:
        # As vLLM: echo with logprobs scores the prompt's tokens too.
        return self.sampling_params(self.max_tokens, self.logprobs, self.logprobs if self.echo else None)


class CompletionLogprobs(BaseModel):
    """Offsets are into the choice's whole text (the echoed prompt included); a prompt's first token, which nothing
    predicts, has a null logprob and null alternatives (as vLLM answers)."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- embeddings ---------------------------------------------------------------------------------


class EmbeddingRequest(WireModel):
    model: Text
    input: Text | list[Text] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, description="Logged with the request")
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="vLLM's extension: cut each input to its first k tokens (-1: the model's window); "
        "without it an input longer than the window is a 400", json_schema_extra=VLLM_EXTENSION)

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _a_length_or_the_window(cls, value: int) -> int:
        if value == 0:
            raise ValueError("truncate_prompt_tokens is -1 (the model's window) or a token count of at least 1")
        return value

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if any(not t for t in texts):
            raise ValueError("input must not contain empty strings")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


# --- models -------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "quantserve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
