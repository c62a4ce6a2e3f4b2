"""The executor's side of the market: answer peers' probes and run their requests.

A probe is answered from the accept policy; an accepted probe is a *grant*: the offload
that follows within ``grant_ttl`` runs without asking the policy again. An offload that is
an offer (or that no grant announced) is judged by the policy like a probe. Every request
is refused while its peer has ``max_peer_inflight`` running here, while all peers together
have ``max_peers_inflight``, or while the peer could not pay for one more
(``CreditAccount.can_serve <wwwserve.market.credit.CreditAccount.can_serve>()``).

While an accepted request's answer is silent (queued behind others in the engine, or
preempted and waiting to be prefilled again), the executor sends an empty keepalive chunk
every ``keepalive_interval``, so a slow answer is not taken for a dead executor. The order
of what it sends is ``ExecutorStream``'s.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from ..config import DispatchParams
from ..engines import Chunk, CompletionRequest
from ..errors import WWWServeError, leaves
from ..identity import Identity
from ..log import tracing
from ..overlay import Overlay, ResponseSender
from ..wire import decode, encode
from .local import Local
from .messages import OFFLOAD_PROTOCOL, PROBE_PROTOCOL, Offload, Probe, ProbeReply
from .protocol import ExecutorStream, Phase

__all__ = ["Executor", "Grants"]

logger = logging.getLogger(__name__)


class Grants:
    """Accepted probes: (peer, request id) -> expiry and the model granted, at most
    ``limit`` of them (sans-IO)."""

    def __init__(self, ttl: float, limit: int = 4096) -> None:
        self.ttl = ttl
        self.limit = limit
        self._grants: dict[tuple[str, str], tuple[float, str]] = {}

    def __len__(self) -> int:
        return len(self._grants)

    def grant(self, peer: str, request_id: str, now: float, model: str = "") -> None:
        """Entitle ``peer`` to send ``request_id`` until ``now + ttl``, on ``model``."""
        if len(self._grants) >= self.limit:
            for key in [k for k, g in self._grants.items() if g[0] <= now] or \
                    [next(iter(self._grants))]:
                del self._grants[key]
        self._grants[(peer, request_id)] = (now + self.ttl, model)

    def take(self, peer: str, request_id: str, now: float) -> str | None:
        """Use up ``peer``'s grant for ``request_id``: the model granted, or None if it
        has none (or it expired)."""
        grant = self._grants.pop((peer, request_id), None)
        if grant is None or grant[0] <= now:
            return None
        return grant[1]


class Executor:
    """Serves peers' probes and offloaded requests on the overlay (see the module docs)."""

    def __init__(self, local: Local, *, overlay: Overlay, params: DispatchParams,
                 identity: Identity | None = None) -> None:
        self.local = local
        self.overlay = overlay
        self.params = params
        #: signs a receipt for every answer given to a peer (None: no receipts)
        self.identity = identity
        self.stats = local.stats
        self.grants = Grants(params.grant_ttl)
        self.inflight: Counter[str] = Counter()

    @property
    def running_for_peers(self) -> int:
        """Peers' requests running here now."""
        return sum(self.inflight.values())

    def serve(self) -> None:
        """Answer peers' probes and offloaded requests on the overlay."""
        self.overlay.serve(PROBE_PROTOCOL, self._on_probe)
        self.overlay.serve(OFFLOAD_PROTOCOL, self._on_offload)

    def _accepts(self, model: str, route: tuple[str, ...]) -> str | None:
        local = self.local
        if local.peer_id in route or len(route) > self.params.max_hops:
            return None
        return local.policy.accept(local.view(model), local.rng)

    def _refusal(self, peer: str) -> str | None:
        """Why ``peer`` may not have one more request run here now, if it may not: too
        many of its own or of all peers' running, or it cannot pay for them."""
        params = self.params
        if self.inflight[peer] >= params.max_peer_inflight or \
                self.running_for_peers >= params.max_peers_inflight:
            self.stats["flood_refused"] += 1
            return "too many requests"
        if not self.local.credit.can_serve(peer, params.reward, self.inflight[peer]):
            self.stats["unpaid_refused"] += 1
            return "credit"
        return None

    async def _on_probe(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        probe = decode(payload, expect=Probe)
        refusal = "model" if not self.local.matching(probe.model) else self._refusal(peer)
        name = self._accepts(probe.model, probe.route) if refusal is None else None
        self.stats["probe_accepted" if name else "probe_refused"] += 1
        if name:  # (not counted as admitted: most granted probes are never used)
            self.grants.grant(peer, probe.request_id, trio.current_time(), name)
        await sender.send(encode(ProbeReply(accept=name is not None, model=name or "",
                                            reason="" if name else refusal or "busy")))

    async def _on_offload(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        off = decode(payload, expect=Offload)
        request = decode(off.request, expect=CompletionRequest)
        with tracing(request.trace):
            await self._execute(peer, off, request, sender)

    async def _execute(self, peer: str, off: Offload, request: CompletionRequest,
                       sender: ResponseSender) -> None:
        if self.local.peer_id in off.route or off.hops > self.params.max_hops:
            raise WWWServeError("route loop or hop limit exceeded")
        stream = ExecutorStream(peer, request.request_id)
        refusal = "model" if not self.local.matching(request.model) else self._refusal(peer)
        if refusal is not None:
            await sender.send(stream.refuse(refusal))
            return
        self.inflight[peer] += 1
        try:
            await self._run_for(peer, off, request, stream, sender)
        finally:
            self.inflight[peer] -= 1
            if not self.inflight[peer]:
                del self.inflight[peer]

    async def _run_for(self, peer: str, off: Offload, request: CompletionRequest,
                       stream: ExecutorStream, sender: ResponseSender) -> None:
        local = self.local
        granted = None if off.offer else \
            self.grants.take(peer, request.request_id, trio.current_time())
        if granted is None:
            # an offer, or an offload no accepted probe of ours announced: the policy decides
            accepted = self._accepts(request.model, off.route)
            self.stats["probe_accepted" if accepted else "probe_refused"] += 1
            if accepted is None:
                await sender.send(stream.refuse("busy"))
                return
            name, token = accepted, local.by_name(accepted).admit()
        else:
            candidates = local.view(request.model).models
            if not candidates:
                raise WWWServeError(f"model {request.model!r} unavailable here")
            name = granted
            if all(m.name != name for m in candidates):  # the granted model went down
                name = min(candidates, key=lambda m: (m.load.queued, m.load.token_usage)).name
            token = local.by_name(name).admit()
        try:
            await self._serve_admitted(peer, request, stream, sender, name, token)
        finally:
            local.by_name(name).release(token)

    async def _serve_admitted(self, peer: str, request: CompletionRequest,
                              stream: ExecutorStream, sender: ResponseSender, name: str,
                              token: int) -> None:
        local = self.local
        await sender.send(stream.accept(name))

        model = local.by_name(name)
        engine = model.engine
        sending = trio.Lock()
        interval = self.params.keepalive_interval
        last = trio.current_time()

        async def forward(chunk: Chunk) -> None:
            nonlocal last
            data = stream.chunk(chunk)
            async with sending:
                await sender.send(data)
            last = trio.current_time()

        async def keep_alive() -> None:
            nonlocal last
            while True:
                await trio.sleep_until(last + interval)
                if trio.current_time() >= last + interval:
                    # an engine reported down gets no keepalive (the requester's stall
                    # timeout then decides), and is looked at again one interval later
                    if engine.load().healthy and stream.phase is Phase.STREAMING:
                        async with sending:
                            await sender.send(stream.keepalive())
                    last = trio.current_time()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_alive)
                try:
                    await model.generate(request, forward, admitted=token)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # the keepalive task only ends by cancellation or when the requester left
            # (then generate fails the same way): raise what the engine raised, unwrapped
            raise leaves(group)[0] from None
        finally:
            local.notify()
        receipt = stream.finish(self.identity)
        if receipt is not None:
            await sender.send(receipt)
        self.stats["accepted"] += 1
        local.credit.earn(peer, self.params.reward, request.request_id)
        logger.info("executed for %s on %s", peer, name)
