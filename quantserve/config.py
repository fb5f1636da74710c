"""The one quantserve configuration: models, the variants to build, how each is served, and what it costs.

`quantserve quantize`, `quantserve serve`, the Ray Serve builder and the Helm chart all read this model,
from the same YAML file (`quantserve.yaml` at the top of the repo by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantserve.constants import DEFAULT_CONFIG_PATH

# Names that end up in folder names and in `model:variant` ids.
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]


class ConfigError(ValueError):
    """The configuration file is missing or invalid; the message is meant for the user as is."""


def require_unique(names: list[str], what: str) -> list[str]:
    """`names` as given, or a ValueError naming each repeated one (`what`: e.g. "model names")."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what}: {', '.join(map(repr, repeated))} given more than once in {names}")
    return names


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationSpec(StrictModel):
    """Texts that GPTQ calibrates on."""

    file: str = Field("builtin:calibration.txt", description="Text file, one sample per paragraph; builtin: = shipped")
    samples: int = Field(32, ge=1, le=4096, description="How many samples to use")
    max_tokens: int = Field(256, ge=16, le=8192, description="Samples are cut to this many tokens")


class OnnxBuild(StrictModel):
    """An ONNX variant built with the ONNX Runtime GenAI model builder, then (optionally) weight-quantized."""

    method: Literal["onnx"] = "onnx"
    precision: Literal["fp32", "int8", "int4"]
    block_size: int = Field(32, ge=16, le=256, description="Weight block size for int8/int4 (MatMulNBits)")
    algorithm: Literal["rtn", "k_quant", "k_quant_last", "hqq"] = Field(
        "rtn", description="int4 weight algorithm: the builder's rtn/k_quant/k_quant_last (keeps lm_head in int8), "
        "or hqq (ONNX Runtime's MatMulNBits quantizer over the fp32 export; better quality, embedding left fp32)"
    )
    quantize_embedding: bool = Field(True, description="Also block-quantize the token embedding (GatherBlockQuantized)")

    @model_validator(mode="after")
    def _block_size_is_power_of_two(self) -> OnnxBuild:
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        return self


GroupOverrides = Annotated[dict[str, int], Field(
    default_factory=dict, description="Regular expression on module names (e.g. 'mlp\\.down_proj', 'lm_head') -> "
    "group size for the modules it matches; the first match wins")]
LmHeadQuantizer = Literal["builder-rtn", "rtn", "clip_search", "hqq"]


class GptqBuild(StrictModel):
    """GPTQ through GPTQModel, saved as a standard GPTQ checkpoint and converted to ONNX MatMulNBits."""

    method: Literal["gptq"] = "gptq"
    bits: Literal[4, 8] = 4
    group_size: int = Field(64, ge=16, le=256, description="Must divide the model's hidden size (576 = 9 x 64)")
    group_overrides: GroupOverrides
    desc_act: bool = Field(False, description="Act-order: quantize columns by decreasing Hessian diagonal")
    sym: bool = Field(True, description="Symmetric groups (no zero point); False adds a 4-bit zero point per group")
    true_sequential: bool = Field(True, description="Quantize a layer's modules in order, each after the last")
    damp_percent: float = Field(0.05, gt=0, lt=1)
    mse: float = Field(0.0, ge=0, description="> 0: GPTQModel searches each group's clipping range (its MSE option)")
    lm_head: LmHeadQuantizer = Field(
        "builder-rtn", description="The tied lm_head/embedding: builder-rtn leaves it to the ONNX builder (RTN, block "
        "32); the others quantize it into the checkpoint at the build's group size, so the embedding shares it")
    calibration: CalibrationSpec = CalibrationSpec()


class BlockwiseBuild(StrictModel):
    """Every linear weight and the tied lm_head/embedding block-quantized without GPTQ (quantize/weight_quant.py),
    written as a GPTQ-format checkpoint and converted to ONNX MatMulNBits like a GPTQ build."""

    method: Literal["blockwise"] = "blockwise"
    algorithm: Literal["rtn", "clip_search", "hqq"] = "clip_search"
    bits: Literal[4] = 4
    group_size: int = Field(64, ge=16, le=256, description="Must divide every weight's input width it applies to")
    group_overrides: GroupOverrides
    activation_weighted: bool = Field(
        True, description="clip_search: weight each input channel's error by its mean squared activation, measured "
        "on the calibration text")
    calibration: CalibrationSpec = CalibrationSpec(file="builtin:calibration_large.txt", samples=16, max_tokens=512)


class EmbeddingOnnxBuild(StrictModel):
    """A sentence-embedding encoder exported to ONNX (pooling happens in the server)."""

    method: Literal["embedding-onnx"] = "embedding-onnx"
    precision: Literal["fp32", "int8"]


class BaseBuild(StrictModel):
    """The base Hugging Face folder itself, unquantized: what vLLM serves at the precision of `serve.vllm.dtype`."""

    method: Literal["base"] = "base"


BuildSpec = Annotated[OnnxBuild | GptqBuild | BlockwiseBuild | EmbeddingOnnxBuild | BaseBuild,
                     Field(discriminator="method")]


class AutoscalingSpec(StrictModel):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class RouterSpec(StrictModel):
    """The router deployment (the OpenAI ingress) as Ray Serve runs it. With more than one replica possible, per-key
    rate limits are kept in one shared store (serving/rate_limit_store.py), so a key's limit holds across replicas;
    `server.limits.max_concurrent_requests` and `max_queued_requests` apply to each replica."""

    replicas: int = Field(1, ge=1, description="Fixed router replica count when autoscaling is not set")
    autoscaling: AutoscalingSpec | None = Field(None, description="Serve's autoscaling bounds instead of a fixed "
                                                "count; min_replicas at least 1 (the ingress never scales to zero)")
    num_cpus: float = Field(0.1, ge=0, description="CPUs Ray reserves for each router replica")

    @model_validator(mode="after")
    def _never_scales_to_zero(self) -> RouterSpec:
        if self.autoscaling is not None and self.autoscaling.min_replicas < 1:
            raise ValueError("router.autoscaling.min_replicas must be at least 1: no replica, no ingress")
        return self

    @property
    def max_replicas(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas


class VllmSpec(StrictModel):
    """vLLM engine settings, for variants with `backend: vllm` (context and batch size come from the ServeSpec)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype; auto = the checkpoint's (float32 for the dequantized GGUF base)")
    kv_cache_gib: int = Field(1, ge=1, le=1024, description="CPU only: KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: share of GPU memory vLLM may use")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="GPU only: GPUs one replica shards the model over")
    enforce_eager: bool = Field(
        True, description="No torch.compile / CUDA graphs: starts in about half the time; on vllm-cpu the compiled "
        "mode was also seen to answer wrongly. Turn off on a GPU for faster decoding")


class OnnxSpec(StrictModel):
    """ONNX engine settings, for variants with `backend: onnx` (serving/engines/prefill_plan.py, prefix_cache.py)."""

    prefix_cache: bool = Field(True, description="Keep prompts' KV caches in host memory; a prompt that starts with "
                               "the same tokens as an earlier one (a system prompt, earlier chat turns) reuses them "
                               "instead of computing them again")
    prefix_cache_mib: int = Field(256, ge=1, le=1_048_576, description="Host memory for the prefix cache (least "
                                  "recently used prompts are dropped first)")
    prefill_chunk_tokens: int = Field(512, ge=0, le=131072, description="Most prompt tokens computed in one forward "
                                      "pass; 0 runs every prompt whole, and running streams wait for it")
    prefill_share: float = Field(0.8, gt=0, le=100, description="While streams decode, each iteration's prompt "
                                 "chunk is sized to take about this fraction of a decode step, so a long prompt "
                                 "arriving slows the streams' tokens by about (1 + this) instead of stopping them")


class ServeSpec(StrictModel):
    """How a variant is served."""

    enabled: bool = True
    backend: Literal["onnx", "vllm"] = "onnx"
    replicas: int = Field(1, ge=0, description="Fixed replica count when autoscaling is not set")
    autoscaling: AutoscalingSpec | None = None
    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0, ge=0)
    max_batch_size: int = Field(8, ge=1, le=256, description="Sequences decoded together by one replica")
    max_queue: int = Field(64, ge=0, description="Requests waiting for a batch slot before 503")
    max_context: int = Field(2048, ge=64, le=131072, description="KV-cache positions per sequence (prompt + output)")
    threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime intra-op threads per replica; unset: "
                                "one per whole CPU in num_cpus (at least one)")
    hardware_profile: str = Field("cpu-2vcpu", description="Key in quantserve/prices.yaml; sets $ per replica-hour")
    fallbacks: list[Name] = Field(default_factory=list, description="Variants of the same model to try, in order")
    vllm: VllmSpec = VllmSpec()
    onnx: OnnxSpec = OnnxSpec()

    @property
    def intra_op_threads(self) -> int:
        """`threads`, or the whole CPUs the replica is given: a replica of 0.5 CPU shares a core and runs one."""
        return self.threads if self.threads is not None else max(1, int(self.num_cpus))

    @model_validator(mode="after")
    def _gpus_for_tensor_parallelism(self) -> ServeSpec:
        shards = self.vllm.tensor_parallel_size
        if self.backend == "vllm" and shards > 1 and self.num_gpus < shards:
            raise ValueError(f"vllm.tensor_parallel_size is {shards} but num_gpus is {self.num_gpus}; "
                             "a replica needs one GPU per shard")
        return self


class VariantConfig(StrictModel):
    name: Name
    build: BuildSpec
    serve: ServeSpec = ServeSpec()


class ModelConfig(StrictModel):
    name: Name
    kind: Literal["chat", "embedding"] = "chat"
    source: str = Field(description="Local Hugging Face folder, a .gguf file, or package:MODULE/FILE")
    default_variant: Name
    variants: list[VariantConfig]

    @model_validator(mode="after")
    def _variants_consistent(self) -> ModelConfig:
        names = require_unique([v.name for v in self.variants], f"model {self.name!r}: variant names")
        if self.default_variant not in names:
            raise ValueError(f"model {self.name!r}: default_variant {self.default_variant!r} is not one of {names}")
        for variant in self.variants:
            for fallback in variant.serve.fallbacks:
                if fallback not in names or fallback == variant.name:
                    raise ValueError(
                        f"model {self.name!r}: variant {variant.name!r} falls back to unknown {fallback!r}"
                    )
            embedding_build = isinstance(variant.build, EmbeddingOnnxBuild)
            if embedding_build != (self.kind == "embedding"):
                raise ValueError(f"model {self.name!r}: variant {variant.name!r} build does not fit kind {self.kind!r}")
            if isinstance(variant.build, BaseBuild) and variant.serve.backend != "vllm":
                raise ValueError(f"model {self.name!r}: variant {variant.name!r} serves the base folder, which only "
                                 "the vllm backend loads; set serve.backend: vllm")
        return self

    def variant(self, name: str) -> VariantConfig:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


class LimitsConfig(StrictModel):
    """Bounds on what one request may ask for; the router answers 413/400 naming the limit."""

    max_body_bytes: int = Field(1_000_000, ge=1024, description="Request body size, else 413")
    max_tokens: int = Field(4096, ge=1, description="max_tokens / max_completion_tokens per request")
    max_n: int = Field(8, ge=1, le=64, description="Choices per request")
    max_stop_strings: int = Field(8, ge=0, le=64, description="Stop strings per request")
    max_embedding_inputs: int = Field(256, ge=1, description="Texts per embeddings request")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Prompt tokens per request (below the "
                                          "context length), checked by the replica after tokenizing")
    request_timeout_s: float = Field(600, gt=0, description="A generation or embedding still running after this "
                                     "ends with 504; rolling updates and scale-down wait this long for requests to end")
    max_concurrent_requests: int = Field(256, ge=1, description="/v1 requests the router works on at once, streams "
                                         "included")
    max_queued_requests: int = Field(512, ge=1, description="/v1 requests waiting for one of those places; past "
                                     "this, 503 (queue_full) with Retry-After")
    stall_timeout_s: float = Field(120, gt=0, description="An ONNX replica whose model thread has made no progress "
                                   "for this long while requests wait reports unhealthy, and Serve replaces it")
    embedding_batch_tokens: int = Field(8192, ge=512, description="Tokens (padding included) in one embeddings "
                                        "forward pass, whatever the number of requests and inputs")


class AuthConfig(StrictModel):
    """API keys (`Authorization: Bearer KEY`); authentication is on as soon as one key is configured."""

    api_keys_env: str = Field("QUANTSERVE_API_KEYS", description="Environment variable holding comma-separated "
                              "keys (the Helm chart sets it from a Secret)")
    api_keys_file: str | None = Field(None, description="File with one key per line (# starts a comment), "
                                      "relative to the working dir")


class RateLimitConfig(StrictModel):
    """Per-key limits (per caller while authentication is off); exceeding one answers 429 with Retry-After."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests a key may start per minute")
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt + completion tokens a key may use "
                                          "per minute, charged when each request finishes")


class LoggingSpec(StrictModel):
    """Ray Serve's logs of the router and every replica (files under Ray's session folder, or `dir`)."""

    format: Literal["json", "text"] = Field("json", description="json: one object per line, with request_id")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dir: str | None = Field(None, description="Folder for the log files instead of Ray's session folder")
    access_log: bool = Field(True, description="One line per request (method, route, status, latency)")
    buffer_records: int = Field(1, ge=1, le=100_000, description="Records a replica buffers before writing them. "
                                "Serve's throughput mode would buffer 1000: lines show late and a crash loses them")


class ServerConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 only when other hosts must reach it")
    port: int = Field(8000, ge=0, le=65535)
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    logging: LoggingSpec = LoggingSpec()
    drain_timeout_s: float = Field(30, ge=0, description="On SIGTERM: new requests get 503 while in-flight ones "
                                   "may finish for this long, then the application stops")


class QuantserveConfig(StrictModel):
    """Root of `quantserve.yaml`."""

    models_dir: str = Field("models", description="Where variants are built and read, relative to the working dir")
    server: ServerConfig = ServerConfig()
    router: RouterSpec = RouterSpec()
    models: list[ModelConfig]

    @model_validator(mode="after")
    def _model_names_unique(self) -> QuantserveConfig:
        require_unique([m.name for m in self.models], "model names")
        return self

    def model(self, name: str) -> ModelConfig:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> QuantserveConfig:
    """Read and validate a config file; raise ConfigError with a one-line, user-facing message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass --config PATH") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}".splitlines()[0]) from None
    return parse_config(raw, origin=str(path))


def parse_config(raw: object, origin: str = "config") -> QuantserveConfig:
    try:
        return QuantserveConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """`models.0.variants.1.build.block_size: must be a power of two` style, all errors on one line."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
