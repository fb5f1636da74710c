"""Which variant answers a request: name resolution, readiness, and fallbacks.

Within a variant, Ray Serve's handle picks the replica (power of two choices on queue length). Across
variants, the router tries the requested variant, then its `fallbacks` in order, skipping those with
no live replica; a variant that answers "overloaded" passes the request on to the next one (FallbackChain,
for generations and embeddings alike).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serving.catalog import ServedVariant
from serving.protocol import ApiError

logger = logging.getLogger("ray.serve.quantserve.router")
PROBE_INTERVAL_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 2.0
RETRY_AFTER_SECONDS = "2"
# A call that failed because its replica is gone or restarting: the variant is down, its fallbacks may answer.
REPLICA_GONE = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)
# The replica's queue is full (Serve's max_queued_requests): try a fallback, the variant itself is fine.
REPLICA_BUSY = (BackPressureError,)
Answer = TypeVar("Answer")


@dataclass
class VariantState:
    variant: ServedVariant
    handle: object | None  # a Ray Serve DeploymentHandle; None for a variant configured with no replicas
    ready: bool = False
    stats: dict = field(default_factory=dict)


class VariantDirectory:
    def __init__(self, variants: list[ServedVariant], handles: dict[str, object]) -> None:
        self.states = {v.id: VariantState(v, handles.get(v.id)) for v in variants}
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

    def candidates(self, state: VariantState) -> list[VariantState]:
        """The requested variant and its fallbacks that have a live replica, in order; 503 if none."""
        chain = [state] + [self.states[f"{state.variant.model}:{name}"] for name in state.variant.fallbacks
                           if f"{state.variant.model}:{name}" in self.states]
        live = [candidate for candidate in chain if candidate.ready]
        if not live:
            raise ApiError(503, f"No healthy replica for `{state.variant.id}` or its fallbacks; retry shortly",
                           code="no_healthy_replica", headers={"Retry-After": RETRY_AFTER_SECONDS})
        return live

    async def probe_forever(self, on_probe) -> None:
        """Ask every variant's replicas for their stats (a variant with none answering is not ready), then hand
        every state to `on_probe`, so that a variant that never became ready is reported too."""
        while True:
            await asyncio.gather(*(self._probe(state) for state in self.states.values()))
            for state in self.states.values():
                on_probe(state)
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def _probe(self, state: VariantState) -> None:
        ready = False
        if state.handle is not None:  # None: configured with no replicas
            try:
                state.stats = await asyncio.wait_for(state.handle.stats.remote(), PROBE_TIMEOUT_SECONDS)
                ready = bool(state.stats.get("ready", True))
            except Exception as exc:  # a dead or missing replica: any failure means not ready
                logger.debug("probe of %s failed: %s", state.variant.id, exc)
        if ready != state.ready:
            logger.info("variant %s is %s", state.variant.id, "ready" if ready else "NOT ready")
            state.ready = ready


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
            except REPLICA_GONE + REPLICA_BUSY as exc:
                logger.warning("variant %s failed before it answered: %s", candidate.variant.id, exc)
                candidate.ready = candidate.ready and isinstance(exc, REPLICA_BUSY)
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
