"""What the application serves: each configured variant joined with its manifest record and its price."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantserve.config import ConfigError, QuantserveConfig
from quantserve.manifest import built_name, read_manifest
from quantserve.prices import PriceError, load_prices


@dataclass(frozen=True)
class ServedVariant:
    model: str
    variant: str
    kind: str  # chat | embedding
    backend: str  # onnx | vllm
    folder: str  # what the backend loads
    format: str
    bits: int
    size_bytes: int
    hardware_profile: str
    price_per_hour: float
    fallbacks: tuple[str, ...]
    is_default: bool
    perplexity: float | None
    max_batch_size: int
    max_queue: int
    max_context: int
    threads: int
    vllm: dict = field(default_factory=dict)  # quantserve.config.VllmSpec, for backend vllm
    onnx: dict = field(default_factory=dict)  # quantserve.config.OnnxSpec, for backend onnx
    cache_dir: str = ""  # where an engine may keep caches (vLLM's compile cache), inside models_dir

    @property
    def id(self) -> str:
        return f"{self.model}:{self.variant}"

    @property
    def deployment_name(self) -> str:
        return f"{self.model}--{self.variant}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ServedVariant:
        return cls(**{**values, "fallbacks": tuple(values["fallbacks"])})


def load_price_table() -> dict[str, float]:
    """Profile name -> $ per hour, from the price table (quantserve/prices.yaml); a ConfigError if bad."""
    try:
        table = load_prices()
    except PriceError as exc:
        raise ConfigError(str(exc)) from None
    return {name: profile.usd_per_hour for name, profile in table.profiles.items()}


def build_catalog(config: QuantserveConfig, prices: dict[str, float] | None = None) -> list[ServedVariant]:
    """Every enabled variant, ready to serve; a ConfigError naming what to do when one is not built."""
    prices = load_price_table() if prices is None else prices
    served = []
    for model in config.models:
        model_dir = Path(config.models_dir) / model.name
        manifest = read_manifest(model_dir)
        for variant in model.variants:
            spec = variant.serve
            if not spec.enabled:
                continue
            built_as = built_name(variant.name, variant.build.method)
            record = manifest.variants.get(built_as) if manifest else None
            if record is None:
                raise ConfigError(f"variant {model.name}:{variant.name} is not built in {model_dir}; "
                                  f"run `quantserve quantize build` (or `make variants`)")
            if spec.backend not in record.serve_paths:
                raise ConfigError(f"variant {model.name}:{variant.name} cannot be served by {spec.backend!r}; "
                                  f"its build supports {sorted(record.serve_paths)}")
            if spec.hardware_profile not in prices and prices:
                raise ConfigError(f"variant {model.name}:{variant.name}: unknown hardware_profile "
                                  f"{spec.hardware_profile!r}; known: {', '.join(sorted(prices))}")
            folder = (model_dir / built_as / record.serve_paths[spec.backend]).resolve()
            served.append(ServedVariant(
                model=model.name, variant=variant.name, kind=model.kind, backend=spec.backend, folder=str(folder),
                format=record.format, bits=record.bits, size_bytes=record.total_bytes,
                hardware_profile=spec.hardware_profile, price_per_hour=prices.get(spec.hardware_profile, 0.0),
                fallbacks=tuple(spec.fallbacks), is_default=variant.name == model.default_variant,
                perplexity=record.quality.perplexity, max_batch_size=spec.max_batch_size, max_queue=spec.max_queue,
                max_context=spec.max_context, threads=spec.intra_op_threads,
                vllm=spec.vllm.model_dump() if spec.backend == "vllm" else {},
                onnx=spec.onnx.model_dump() if spec.backend == "onnx" else {},
                cache_dir=str((model_dir / ".cache").resolve()),
            ))
    return served
