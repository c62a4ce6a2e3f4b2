"""Helpers for tests and benchmarks: child processes on loopback, signed duel evidence.

:class:`ChildProcess` starts ``python -m wwwserve <command> ... --json``-style commands that
print one JSON object per line, waits for their ``started`` event and keeps the rest::

    async with trio.open_nursery() as nursery:
        engine = ChildProcess(["sim-engine", "--port", "0", "--json"])
        started = await engine.start(nursery)
        print(started["url"])
        ...
        await engine.stop()
"""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio

from .duel.evidence import (
    AnswerReceipt,
    DuelEvidence,
    DuelRecord,
    VoteCommit,
    VoteReveal,
    commitment,
    digest,
    tally,
)
from .identity import Identity
from .ledger.state import Rules
from .ledger.tx import DuelSettlement
from .wire import encode, seal

__all__ = ["ChildProcess", "signed_duel"]


class ChildProcess:
    """One ``python -m wwwserve`` child process speaking JSON lines on stdout."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = [sys.executable, "-m", "wwwserve", *args]
        self.events: list[dict[str, Any]] = []
        self.started: dict[str, Any] = {}
        self._started = trio.Event()
        self._changed = trio.Event()
        self.proc: trio.Process | None = None

    async def start(self, nursery: trio.Nursery, within: float = 30.0) -> dict[str, Any]:
        """Start the process and return its ``started`` event."""
        self.proc = await nursery.start(functools.partial(
            trio.run_process, self.args, stdout=-1, check=False))
        nursery.start_soon(self._read)
        with trio.fail_after(within):
            await self._started.wait()
        return self.started

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "started" and not self._started.is_set():
                    self.started = event
                    self._started.set()
                self.events.append(event)
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, predicate: Any, within: float) -> None:
        """Wait until ``predicate(self)`` holds (re-checked on each event and every 50 ms)."""
        with trio.fail_after(within):
            while not predicate(self):
                with trio.move_on_after(0.05):
                    await self._changed.wait()

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.proc.wait()
            if self.proc.returncode is None:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode


def signed_duel(
    requester: Identity,
    executors: tuple[Identity, Identity],
    judges: Sequence[Identity],
    verdicts: Sequence[str | None],
    *,
    network: str,
    rules: Rules | None = None,
    duel_id: str = "duel-1",
    answers: tuple[str | None, str | None] = ("answer x", "answer y"),
    x_first: Sequence[bool] | None = None,
    nonce: int = 0,
) -> DuelSettlement:
    """A duel settlement with real signed evidence, for tests.

    ``verdicts[i]`` is judge ``i``'s vote as it saw the answers (``A``, ``B``, ``tie``,
    ``abstain``), or None for a judge that committed but never revealed. Each answer
    (None: missing) comes with its executor's signed receipt. Winner, loser and
    judge groups are what the evidence implies (so the settlement is valid unless the
    test changes it); amounts are ``rules``' (default: the authors').
    """
    rules = rules or Rules(network)
    order = tuple(x_first) if x_first is not None else (True,) * len(judges)
    record = DuelRecord(network=network, duel_id=duel_id, requester=requester.peer_id,
                        executors=(executors[0].peer_id, executors[1].peer_id),
                        answers=tuple(digest(a) if a is not None else b"" for a in answers),
                        judges=tuple(j.peer_id for j in judges), x_first=order)
    record_env = encode(seal(record, requester))
    commits, reveals, votes = [], [], {}
    for judge, verdict in zip(judges, verdicts, strict=True):
        salt = judge.peer_id.encode()[:16]
        shown = verdict or "abstain"
        commits.append(encode(seal(VoteCommit(
            network=network, duel_id=duel_id, requester=requester.peer_id,
            judge=judge.peer_id, record=digest(record_env),
            commitment=commitment(duel_id, judge.peer_id, shown, salt)), judge)))
        if verdict is not None:
            reveals.append(encode(seal(VoteReveal(
                network=network, duel_id=duel_id, requester=requester.peer_id,
                judge=judge.peer_id, verdict=verdict, salt=salt), judge)))
            votes[judge.peer_id] = verdict
    outcome = tally(record, votes)
    receipts = tuple(encode(seal(AnswerReceipt(
        requester=requester.peer_id, request_id=f"{duel_id}-{k}", digest=digest(answer)),
        executor)) for k, (executor, answer) in enumerate(zip(executors, answers, strict=True))
        if answer is not None)
    evidence = encode(DuelEvidence(record=record_env, receipts=receipts,
                                   commits=tuple(commits), reveals=tuple(reveals)))
    return DuelSettlement(
        network=network, requester=requester.peer_id, duel_id=duel_id,
        winner=outcome.winner, loser=outcome.loser, reward=rules.duel_reward,
        loser_penalty_ppm=rules.duel_loser_ppm, majority=outcome.majority,
        minority=outcome.minority, silent=outcome.silent,
        minority_penalty_ppm=rules.duel_minority_ppm,
        silent_penalty_ppm=rules.duel_silent_ppm, evidence=evidence, nonce=nonce)
