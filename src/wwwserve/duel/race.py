"""The duel race: one offloaded request sent to two executors, the user's answer the first.

A request picked for a duel (``DuelService.want_duel <.service.DuelService.want_duel>()``)
goes to a first executor as usual and, once it accepts, a copy (fresh request id) goes to a
second one. The first answer to qualify reaches the user (the first to stream a chunk if
streaming, else the first complete one); both go to ``DuelService.judge
<.service.DuelService.judge>()`` in the background, where every step has a deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import trio

from ..engines import Chunk, CompletionRequest, Usage, visible_text
from ..market.requester import Requester, UserSink
from .service import Answer, DuelService

__all__ = ["DuelRace"]

logger = logging.getLogger(__name__)


class _Race:
    """The user's side of a duelled request (see the module docs)."""

    def __init__(self, sink: UserSink, stream: bool) -> None:
        self.sink = sink
        self.stream = stream
        self.user: _Tap | None = None
        self.closed = False  # the user's request has returned: forward nothing more
        self.decided = trio.Event()

    async def forward(self, chunk: Chunk) -> None:
        if self.closed:
            return
        try:
            await self.sink.send(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True  # the user went away

    async def attach(self, tap: _Tap) -> None:
        self.user = tap
        for chunk in tap.chunks:
            await self.forward(chunk)


class _Tap:
    """One executor's answer in a duel: kept for judging, and the user's if it wins."""

    def __init__(self, race: _Race, *, copy: bool = False) -> None:
        self.race = race
        #: the duel's second executor's copy (counted apart from offloaded requests)
        self.duel_copy = copy
        self.chunks: list[Chunk] = []
        self.executor: str | None = None
        self.usage: Usage | None = None
        self.settled = False
        self.receipt_envelope = b""

    def receipt(self, envelope: bytes) -> None:
        self.receipt_envelope = envelope

    @property
    def text(self) -> str | None:
        """The whole answer as a user sees it (text and tool calls), if it completed."""
        return "".join(visible_text(c) for c in self.chunks) if self.usage is not None \
            else None

    async def send(self, chunk: Chunk) -> None:
        self.chunks.append(chunk)
        race = self.race
        if race.user is self:
            await race.forward(chunk)
        elif race.user is None and race.stream:
            await race.attach(self)

    async def finish(self) -> None:
        pass  # completion is marked by ``done()``, with the usage

    def failed(self, why: str) -> None:
        self.chunks.clear()

    async def done(self, usage: Usage | None) -> None:
        self.usage = usage
        self.settled = True
        race = self.race
        if usage is not None and race.user is None:
            await race.attach(self)
        if race.user is self:
            race.decided.set()


class DuelRace:
    """Runs duels for a requester (the ``DuelRunner``)."""

    def __init__(self, duels: DuelService) -> None:
        self.duels = duels

    def want_duel(self) -> bool:
        """Duel this offloaded request? (``p_inspect``)"""
        return self.duels.want_duel()

    async def offload_duel(self, requester: Requester, request: CompletionRequest,
                           sink: UserSink, route: tuple[str, ...], deadline: float,
                           arrived: float) -> Usage | None:
        """Offload ``request`` as a duel (see the module docs)."""
        duels = self.duels
        race = _Race(sink, request.stream)
        first, second = _Tap(race), _Tap(race, copy=True)
        copy = replace(request, request_id=requester.rng.randbytes(8).hex(), trace_id="")
        requester.stats["duels"] += 1
        logger.info("duelled: a copy goes out as request %s", copy.request_id)

        async def run(tap: _Tap, req: CompletionRequest, exclude: frozenset[str],
                      then: Callable[[str], object]) -> None:
            def accepted(executor: str) -> None:
                tap.executor = executor
                then(executor)

            usage = await requester.offload(req, tap, route, deadline, arrived,
                                            exclude=exclude, on_start=accepted)
            await tap.done(usage)

        async def duel() -> None:
            async with trio.open_nursery() as nursery:
                def launch_second(executor: str) -> None:
                    nursery.start_soon(run, second, copy, frozenset({executor}),
                                       lambda _: None)

                await run(first, request, frozenset(), launch_second)
            race.decided.set()  # both are over: if nobody reached the user, say so
            if first.executor is None or second.executor is None:
                requester.stats["duels_unmatched"] += 1
                return
            await duels.judge(request, Answer(first.executor, first.text, first.receipt_envelope),
                              Answer(second.executor, second.text, second.receipt_envelope),
                              route)

        duels.spawn(duel)
        try:
            with trio.move_on_at(deadline):
                await race.decided.wait()
        finally:
            race.closed = True
        user = race.user
        if user is None:
            return None
        if user.usage is not None:
            await sink.finish()
            return user.usage
        sink.failed(f"executor {(user.executor or '?')[-8:]} did not finish its answer")
        return None
