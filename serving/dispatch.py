"""Which variant answers a request: name resolution, readiness, and fallbacks.

Within a variant, Ray Serve's handle picks the replica: each replica takes at most what its engine can hold
(`max_ongoing_requests`, set by the builder), so a full replica's request goes to another replica of the same
variant, and waits at the handle when all are full. Across variants, the router tries the requested variant, then
its `fallbacks` in order, skipping those that cannot answer now; a variant whose handle queue is full too (Serve's
back-pressure) or that answers "overloaded" passes the request on to the next one (FallbackChain, for generations
and embeddings alike).

Readiness comes from Serve's own view of each deployment (`serve.status()`), read once a second without calling
any replica: a variant with a running replica is ready; one configured to scale to zero (`min_replicas: 0`) and
healthy is ready to scale (a request to it scales it up), and the probe never wakes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from serving.catalog import ServedVariant
from serving.protocol import ApiError

logger = logging.getLogger("ray.serve.quantserve.router")
PROBE_INTERVAL_SECONDS = 1.0
FACTS_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_SECONDS = "2"
UNHEALTHY = {"UNHEALTHY", "DEPLOY_FAILED"}
Answer = TypeVar("Answer")


@dataclass(frozen=True)
class ReplicaFailures:
    """The exceptions a call to a variant raises when no replica of it answered (serving.serve_state has Ray
    Serve's): `gone`, its replica is gone or restarting (the variant is down, its fallbacks may answer); `busy`,
    every replica is full and so is the handle's queue (try a fallback, the variant stays up)."""

    gone: tuple[type[BaseException], ...]
    busy: tuple[type[BaseException], ...]


@dataclass
class VariantState:
    """What the router knows of a variant. `status`: running (a replica answers), scaled_to_zero (none runs, a
    request scales it up), not_deployed (configured with no replicas), or Serve's word for a deployment that cannot
    answer now (starting, updating, unhealthy, ...). `facts`: what its engine reported once (vLLM's dtype)."""

    variant: ServedVariant
    handle: object | None  # a Ray Serve DeploymentHandle; None for a variant configured with no replicas
    scales_to_zero: bool = False
    status: str = "starting"
    facts: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Whether a request sent now is answered by this variant (at once, or once it has scaled up)."""
        return self.status in ("running", "scaled_to_zero")

    def mark_gone(self) -> None:
        """A call found its replica gone: not ready until Serve shows a running one again."""
        self.status = "replica_gone"

    def observe(self, deployment) -> None:
        """Take Serve's status of this variant's deployment (a DeploymentStatusOverview; None: not known yet)."""
        if self.handle is None:
            status = "not_deployed"
        elif deployment is None:
            status = "starting"
        elif deployment.replica_states.get("RUNNING", 0) > 0:
            status = "running"
        elif self.scales_to_zero and _name(deployment.status) not in UNHEALTHY:
            status = "scaled_to_zero"
        else:
            status = _name(deployment.status).lower()
        if status != self.status:
            logger.info("variant %s is %s", self.variant.id, status)
            self.status = status


def _name(status) -> str:
    return str(getattr(status, "value", status))


class VariantDirectory:
    def __init__(self, variants: list[ServedVariant], handles: dict[str, object], failures: ReplicaFailures,
                 scales_to_zero: set[str] = frozenset()) -> None:
        self.failures = failures
        self.states = {v.id: VariantState(v, handles.get(v.id), v.id in scales_to_zero) for v in variants}
        self.defaults = {v.model: v.id for v in variants if v.is_default}
        for variant in variants:  # a model whose default is not served answers with its first served variant
            self.defaults.setdefault(variant.model, variant.id)

    def resolve(self, name: str, kind: str) -> VariantState:
        """`model` or `model:variant` -> its state; 404 for an unknown name, 400 for the wrong endpoint."""
        variant_id = self.defaults.get(name, name)
        state = self.states.get(variant_id)
        if state is None:
            raise ApiError(404, f"The model `{name}` does not exist. Known models: {', '.join(self.known_ids())}",
                           param="model", code="model_not_found")
        if state.variant.kind != kind:
            raise ApiError(400, f"`{name}` is a {state.variant.kind} model and cannot serve this endpoint",
                           param="model", code="wrong_model_kind")
        return state

    def known_ids(self) -> list[str]:
        return sorted(self.defaults) + sorted(self.states)

    def chain(self, state: VariantState) -> list[VariantState]:
        """The variant and its fallbacks, in order."""
        return [state] + [self.states[f"{state.variant.model}:{name}"] for name in state.variant.fallbacks
                          if f"{state.variant.model}:{name}" in self.states]

    def candidates(self, state: VariantState) -> list[VariantState]:
        """The requested variant and its fallbacks that can answer now, in order; 503 if none."""
        live = [candidate for candidate in self.chain(state) if candidate.ready]
        if not live:
            raise ApiError(503, f"No healthy replica for `{state.variant.id}` or its fallbacks; retry shortly",
                           code="no_healthy_replica", headers={"Retry-After": RETRY_AFTER_SECONDS})
        return live

    def models_answerable(self) -> dict[str, bool]:
        """Each model: whether a request for it (its default variant) can be answered, itself or by a fallback."""
        return {model: any(c.ready for c in self.chain(self.states[vid])) for model, vid in self.defaults.items()}

    async def probe_forever(self, read_deployments: Callable[[], dict], on_probe) -> None:
        """Read Serve's status of every variant's deployment (`read_deployments`, blocking: deployment name ->
        status overview), then hand every state to `on_probe` (a variant that never became ready is reported too).
        Once a variant runs, its engine's facts are asked for, once."""
        while True:
            try:
                deployments = await asyncio.to_thread(read_deployments)
            except Exception as exc:  # the controller is busy or restarting: keep the last view
                logger.warning("could not read Serve's status: %s", exc)
            else:
                for state in self.states.values():
                    state.observe(deployments.get(state.variant.deployment_name))
                    if state.status == "running" and not state.facts:
                        asyncio.get_running_loop().create_task(self._learn_facts(state))
            for state in self.states.values():
                on_probe(state)
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    @staticmethod
    async def _learn_facts(state: VariantState) -> None:
        state.facts = {"pending": True}  # one question at a time
        try:
            state.facts = await asyncio.wait_for(state.handle.facts.remote(), FACTS_TIMEOUT_SECONDS)
        except Exception as exc:  # asked again at the next probe
            logger.debug("facts of %s not known yet: %s", state.variant.id, exc)
            state.facts = {}


class FallbackChain:
    """One request's way through its variant and the variant's fallbacks.

    `first_answer` asks the live candidates in order until one answers. A candidate whose replica is gone, whose
    queue is full (Serve's back-pressure) or that refuses with 503 (overloaded) passes the request on; any other
    refusal is the answer. `current` is the variant asked last: the one that answered, or the one a failure is
    about (the requested variant when none answered).
    """

    def __init__(self, directory: VariantDirectory, requested: VariantState) -> None:
        self.directory, self.requested, self.current = directory, requested, requested

    async def first_answer(self, ask: Callable[[VariantState], Awaitable[Answer]]) -> Answer:
        refusal: ApiError | None = None
        for candidate in self.directory.candidates(self.requested):
            self.current = candidate
            try:
                return await ask(candidate)
            except self.directory.failures.gone + self.directory.failures.busy as exc:
                logger.warning("variant %s failed before it answered: %s", candidate.variant.id, exc)
                if isinstance(exc, self.directory.failures.gone):
                    candidate.mark_gone()
            except ApiError as exc:
                if exc.status != 503:
                    raise
                refusal = exc
            except Exception:  # the replica raised on this request: a bug to report, not a replica to avoid
                logger.exception("variant %s raised on a request", candidate.variant.id)
                raise ApiError(500, "the replica failed on this request; see its log", code="replica_error") from None
        self.current = self.requested
        message = refusal.message if refusal else f"No healthy replica for `{self.requested.variant.id}`"
        raise ApiError(503, message, code="overloaded" if refusal else "no_healthy_replica",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
