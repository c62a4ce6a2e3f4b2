"""The duel-and-judge protocol: a node's requester and judge roles.

**Requester.** The dispatcher decides, with probability ``p_inspect`` per offloaded request,
to duel it: the request goes to a first executor as usual and, once that one accepts, a copy
with a fresh request id goes to a second executor drawn by stake without the first one, the
requester and the route (so neither executor can tell a duelled request from any other).
The user gets the first answer (the first to stream, or the first complete one when not
streaming); the other is collected up to the request's deadline. Then ``DuelService.judge()``:

1. draws ``k_judges`` judges by stake among live peers serving some model, without the
   executors, the requester and the route (as many as there are, down to ``min_judges``);
   signs a ``DuelRecord``;
2. sends each judge the request's prompt and the two answers, in a random order per judge,
   over ``/wwwserve/judge/1.0.0``; each judge evaluates with its own engine and answers with a
   signed commit (within ``judge_timeout``);
3. once the commits are in, asks each committed judge to reveal (``reveal_timeout``);
4. tallies (``tally()``) and, on a node with a ledger, signs a
   ``DuelSettlement`` carrying the evidence, which every replica
   re-checks. An executor that did not answer in time loses without judges.

**Judge.** Accepts a judgement only from the record's signer, only if it is one of the record's
judges and neither an executor nor the requester, and only if the answers match the record's
digests; evaluates with the judge prompt (``judge``); keeps the vote and salt secret until
asked to reveal. At most ``max_judging`` judgements at a time; votes are forgotten after the
reveal window.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from .._compat import TaskStatus
from ..config import DuelParams
from ..engines import ChatMessage, Chunk, CompletionRequest, Engine
from ..errors import ClosedError, DuelError, EngineError, OverlayError, ProtocolError
from ..evidence import (
    VERDICTS,
    AnswerReceipt,
    DuelEvidence,
    DuelRecord,
    Outcome,
    VoteCommit,
    VoteReveal,
    commitment,
    digest,
    tally,
)
from ..identity import Identity
from ..judging import judge_messages, parse_verdict
from ..ledger.chain import Chain
from ..ledger.tx import DuelSettlement
from ..log import tracing
from ..membership import PeerInfo, PeerStatus
from ..overlay import Overlay, ResponseSender
from ..sampling import weighted_sample
from ..wire import Message, Signed, decode, encode, message, seal, unseal
from .ratings import PeerRecord, Ratings

__all__ = [
    "JUDGE_PROTOCOL",
    "Answer",
    "ChainRatings",
    "DuelError",
    "DuelService",
    "JudgeRequest",
    "RevealRequest",
]

logger = logging.getLogger(__name__)

JUDGE_PROTOCOL = "/wwwserve/judge/1.0.0"


@message("judge-request", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeRequest(Message):
    """Please compare these answers (``record`` is the requester's signed record)."""

    record: bytes
    question: str
    answer_a: str
    answer_b: str


@message("reveal-request", 1)
@dataclass(frozen=True, slots=True, kw_only=True)
class RevealRequest(Message):
    """All commits are in: reveal your vote on ``duel_id``."""

    duel_id: str


@dataclass(frozen=True, slots=True)
class Answer:
    """One executor's part in a duel: who, its answer (None if it never completed) and its
    signed ``AnswerReceipt`` (an answer without a valid one counts as none)."""

    executor: str
    text: str | None
    receipt: bytes = b""


#: Settle a duel on the ledger: (duel id, outcome, evidence) -> submitted?
Settle = Callable[[str, Outcome, bytes], bool]
#: The model and engine this node judges with, or None if it has none available.
JudgeEngine = Callable[[], tuple[str, Engine] | None]
#: On a ledger: (requester, executors, k) -> (checkpoint height, the judges drawn there)
Draw = Callable[[str, set[str], int], tuple[int, tuple[str, ...]]]
#: On a ledger: why a judge must refuse a duel record (its requester holds no stake, its
#: judges are not the ones drawn at its checkpoint), or None if it may judge
CheckRecord = Callable[[DuelRecord], Awaitable[str | None]]


class DuelService:
    """Duel-and-judge for one node (see the module docs)."""

    def __init__(
        self,
        *,
        overlay: Overlay,
        identity: Identity,
        network: str,
        params: DuelParams,
        peers: Callable[[], Mapping[str, PeerInfo]],
        judge_engine: JudgeEngine,
        rng: random.Random,
        stakes: Callable[[], Mapping[str, float]] | None = None,
        settle: Settle | None = None,
        on_engine_done: Callable[[], None] = lambda: None,
        draw: Draw | None = None,
        check_record: CheckRecord | None = None,
    ) -> None:
        self.overlay = overlay
        self.identity = identity
        self.network = network
        self.params = params
        self.peers = peers
        self.judge_engine = judge_engine
        self.rng = rng
        self.stakes = stakes
        self.settle = settle
        self.on_engine_done = on_engine_done
        self.draw = draw
        self.check_record = check_record
        self.stats: Counter[str] = Counter()
        #: outcomes of the duels this node requested (the ledger's, network-wide, are in
        #: ``wwwserve.node.Node.ratings()``)
        self.local_ratings = Ratings()
        self._nursery: trio.Nursery | None = None
        # (requester, duel id) -> (verdict, salt, forget at)
        self._votes: dict[tuple[str, str], tuple[str, bytes, float]] = {}
        self._judging = 0
        #: judgements in progress per requester (one requester gets a share, not all)
        self._judging_for: Counter[str] = Counter()

    @property
    def peer_id(self) -> str:
        """This node's peer id."""
        return self.identity.peer_id

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the judge protocol and host background duels until cancelled."""
        self.overlay.serve(JUDGE_PROTOCOL, self._on_judge)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def want_duel(self) -> bool:
        """Duel this offloaded request? (``p_inspect``)"""
        return self.params.p_inspect > 0 and self.rng.random() < self.params.p_inspect

    def spawn(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn`` in the background (it must end by itself: every step has a deadline).

        Raises ``ClosedError`` once the node is stopping (its nursery takes no new
        tasks): a request in flight then ends with that clear error.
        """
        try:
            if self._nursery is None:
                raise RuntimeError("not started")
            self._nursery.start_soon(fn)
        except RuntimeError:
            raise ClosedError("the node is stopping: its duel service takes no new duels"
                              ) from None

    # ---- requester ----------------------------------------------------------------------
    def _eligible_judges(self, exclude: set[str]) -> dict[str, float]:
        ledger = self.stakes() if self.stakes is not None else None
        return {p: (ledger.get(p, 0.0) if ledger is not None else info.stake)
                for p, info in self.peers().items()
                if p not in exclude and info.status is PeerStatus.ALIVE and info.models}

    async def judge(self, request: CompletionRequest, x: Answer, y: Answer,
                    route: tuple[str, ...] = ()) -> Outcome | None:
        """Judge and settle a duel between ``x`` and ``y`` on ``request`` (see module docs).

        Returns the outcome, or None if the duel was void (no answer at all, not enough
        judges).
        """
        x, y = self._receipted(x), self._receipted(y)
        if x.text is None and y.text is None:
            self.stats["void_no_answer"] += 1
            return None
        duel_id = self.rng.randbytes(12).hex()
        answers = (digest(x.text) if x.text is not None else b"",
                   digest(y.text) if y.text is not None else b"")
        judges: list[str] = []
        anchor = -1
        if x.text is None or y.text is None:
            self.stats["missing_answer"] += 1
        else:
            if self.draw is not None:  # a ledger: drawn where every replica can redraw
                anchor, drawn = self.draw(self.peer_id, {x.executor, y.executor},
                                          self.params.k_judges)
                judges = list(drawn)
            else:
                exclude = {self.peer_id, x.executor, y.executor, *route}
                judges = weighted_sample(self._eligible_judges(exclude),
                                         self.params.k_judges, self.rng)
            if len(judges) < self.params.min_judges:
                self.stats["void_too_few_judges"] += 1
                return None
            if len(judges) < self.params.k_judges:  # all the network could seat
                self.stats["fewer_judges"] += 1
        x_first = tuple(self.rng.random() < 0.5 for _ in judges)
        logger.info("duel %s between %s and %s, judges %s (they log it as duel-%s)",
                    duel_id, x.executor, y.executor, ", ".join(judges) or "none", duel_id)
        record = DuelRecord(network=self.network, duel_id=duel_id, requester=self.peer_id,
                            executors=(x.executor, y.executor), answers=answers,
                            judges=tuple(judges), x_first=x_first, anchor=anchor)
        record_env = encode(seal(record, self.identity))
        commits: dict[str, bytes] = {}
        reveals: dict[str, bytes] = {}
        votes: dict[str, str] = {}
        if judges:
            assert x.text is not None and y.text is not None
            await self._collect_commits(request, record, record_env, x.text, y.text, commits)
            await self._collect_reveals(record, commits, reveals, votes)
        outcome = tally(record, votes, committed=commits)
        self.stats["tie" if outcome.tie else "decided"] += 1
        self.stats["silent_judges"] += len(outcome.silent)
        if outcome.tie:
            self.local_ratings.record(x.executor, y.executor, tie=True)
        else:
            self.local_ratings.record(outcome.winner, outcome.loser)
        evidence = encode(DuelEvidence(record=record_env,
                                       receipts=tuple(a.receipt for a in (x, y)
                                                      if a.text is not None),
                                       commits=tuple(commits[j] for j in judges if j in commits),
                                       reveals=tuple(reveals[j] for j in judges if j in reveals)))
        if self.settle is not None:
            self.stats["settled" if self.settle(duel_id, outcome, evidence)
                       else "settle_failed"] += 1
        logger.info("duel %s: %s over %s (majority %d, minority %d, silent %d)", duel_id,
                    outcome.winner[-8:] or "tie", outcome.loser[-8:] or "tie",
                    len(outcome.majority), len(outcome.minority), len(outcome.silent))
        return outcome

    def _receipted(self, answer: Answer) -> Answer:
        """``answer``, or no answer if its receipt is missing or does not match it."""
        if answer.text is None:
            return answer
        try:
            envelope = decode(answer.receipt, expect=Signed)
            receipt = unseal(envelope, expect=AnswerReceipt)
        except ProtocolError:
            receipt = None
        if receipt is None or envelope.signer != answer.executor or \
                receipt.requester != self.peer_id or receipt.digest != digest(answer.text):
            self.stats["no_receipt"] += 1
            return Answer(answer.executor, None)
        return answer

    async def _collect_commits(self, request: CompletionRequest, record: DuelRecord,
                               record_env: bytes, text_x: str, text_y: str,
                               commits: dict[str, bytes]) -> None:
        record_digest = digest(record_env)
        question = request.prompt_text()

        async def ask(judge: str, x_first: bool) -> None:
            a, b = (text_x, text_y) if x_first else (text_y, text_x)
            payload = encode(JudgeRequest(record=record_env, question=question,
                                          answer_a=a, answer_b=b))
            try:
                async with self.overlay.request(judge, JUDGE_PROTOCOL, payload,
                                                idle_timeout=self.params.judge_timeout) as resp:
                    async for data in resp:
                        envelope = decode(data, expect=Signed)
                        c = unseal(envelope, expect=VoteCommit)
                        if envelope.signer == judge == c.judge and (
                                c.network, c.duel_id, c.requester, c.record) == (
                                self.network, record.duel_id, self.peer_id, record_digest):
                            commits[judge] = data
                        break
            except (OverlayError, ProtocolError) as exc:
                self.stats["judge_failed"] += 1
                logger.debug("judge %s did not commit: %s", judge[-8:], exc)

        with trio.move_on_after(self.params.judge_timeout):
            async with trio.open_nursery() as nursery:
                for judge, x_first in zip(record.judges, record.x_first, strict=True):
                    nursery.start_soon(ask, judge, x_first)

    async def _collect_reveals(self, record: DuelRecord, commits: Mapping[str, bytes],
                               reveals: dict[str, bytes], votes: dict[str, str]) -> None:
        payload = encode(RevealRequest(duel_id=record.duel_id))

        async def ask(judge: str) -> None:
            committed = unseal(decode(commits[judge], expect=Signed), expect=VoteCommit)
            try:
                async with self.overlay.request(judge, JUDGE_PROTOCOL, payload,
                                                idle_timeout=self.params.reveal_timeout) as resp:
                    async for data in resp:
                        envelope = decode(data, expect=Signed)
                        r = unseal(envelope, expect=VoteReveal)
                        if envelope.signer == judge == r.judge and r.verdict in VERDICTS \
                                and commitment(record.duel_id, judge, r.verdict, r.salt) \
                                == committed.commitment and (r.network, r.duel_id,
                                                             r.requester) == (
                                    self.network, record.duel_id, self.peer_id):
                            reveals[judge] = data
                            votes[judge] = r.verdict
                        else:
                            self.stats["bad_reveal"] += 1
                        break
            except (OverlayError, ProtocolError) as exc:
                self.stats["judge_failed"] += 1
                logger.debug("judge %s did not reveal: %s", judge[-8:], exc)

        with trio.move_on_after(self.params.reveal_timeout):
            async with trio.open_nursery() as nursery:
                for judge in commits:
                    nursery.start_soon(ask, judge)

    # ---- judge --------------------------------------------------------------------------
    async def _on_judge(self, peer: str, payload: bytes, sender: ResponseSender) -> None:
        msg = decode(payload)
        if isinstance(msg, JudgeRequest):
            await self._judge(peer, msg, sender)
        elif isinstance(msg, RevealRequest):
            with tracing(f"duel-{msg.duel_id}"):
                logger.info("revealing our vote to %s", peer)
            verdict, salt, _ = self._votes.pop((peer, msg.duel_id), ("", b"", 0.0))
            if not verdict:
                raise DuelError(f"no vote of ours on duel {msg.duel_id!r} by {peer[-8:]}")
            reveal = VoteReveal(network=self.network, duel_id=msg.duel_id, requester=peer,
                                judge=self.peer_id, verdict=verdict, salt=salt)
            await sender.send(encode(seal(reveal, self.identity)))
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} on {JUDGE_PROTOCOL}")

    def _forget_expired(self) -> None:
        now = trio.current_time()
        for key in [k for k, (_, _, until) in self._votes.items() if until <= now]:
            del self._votes[key]

    async def _judge(self, peer: str, msg: JudgeRequest, sender: ResponseSender) -> None:
        envelope = decode(msg.record, expect=Signed)
        record = unseal(envelope, expect=DuelRecord)
        with tracing(f"duel-{record.duel_id}"):
            await self._judge_record(peer, msg, envelope, record, sender)
            logger.info("judged for %s, vote committed", peer)

    async def _judge_record(self, peer: str, msg: JudgeRequest, envelope: Signed,
                            record: DuelRecord, sender: ResponseSender) -> None:
        me = self.peer_id
        if envelope.signer != peer or record.requester != peer:
            raise DuelError("the duel record is not signed by the peer asking")
        if record.network != self.network:
            raise DuelError(f"the duel is for network {record.network!r}")
        if me in record.executors or me == record.requester:
            self.stats["refused_own"] += 1
            raise DuelError("a node never judges a duel it takes part in")
        if me not in record.judges:
            raise DuelError("we are not a judge of this duel")
        x_first = record.x_first[record.judges.index(me)]
        expected = record.answers if x_first else record.answers[::-1]
        if (digest(msg.answer_a), digest(msg.answer_b)) != tuple(expected):
            raise DuelError("the answers do not match the record's digests")
        key = (peer, record.duel_id)
        self._forget_expired()
        if key in self._votes:
            raise DuelError(f"duel {record.duel_id!r} is already judged")
        share = max(1, self.params.max_judging // 4)
        kept = sum(1 for requester, _ in self._votes if requester == peer)
        if self._judging_for[peer] >= share or kept >= 4 * share:
            self.stats["refused_requester_busy"] += 1
            raise DuelError(f"too many judgements in progress for {peer[-8:]}")
        if self._judging >= self.params.max_judging or len(self._votes) >= \
                4 * self.params.max_judging:
            self.stats["refused_busy"] += 1
            raise DuelError("too many judgements in progress")
        self._judging += 1
        self._judging_for[peer] += 1
        try:
            if self.check_record is not None:
                problem = await self.check_record(record)
                if problem is not None:
                    self.stats["refused_record"] += 1
                    raise DuelError(problem)
            verdict = await self.evaluate(record, msg.question, msg.answer_a, msg.answer_b)
        finally:
            self._judging -= 1
            self._judging_for[peer] -= 1
            if not self._judging_for[peer]:
                del self._judging_for[peer]
        salt = self.rng.randbytes(16)
        until = trio.current_time() + self.params.judge_timeout + self.params.reveal_timeout
        self._votes[key] = (verdict, salt, until)
        self.stats[f"voted_{verdict}"] += 1
        commit = VoteCommit(network=self.network, duel_id=record.duel_id, requester=peer,
                            judge=me, record=digest(msg.record),
                            commitment=commitment(record.duel_id, me, verdict, salt))
        await sender.send(encode(seal(commit, self.identity)))

    async def evaluate(self, record: DuelRecord, question: str, answer_a: str,
                       answer_b: str) -> str:
        """This judge's verdict (``A``, ``B``, ``tie`` or ``abstain``) from its own engine.

        Raises ``DuelError`` if no engine can judge now (the judge then stays silent).
        """
        chosen = self.judge_engine()
        if chosen is None:
            raise DuelError("no engine available to judge with")
        model, engine = chosen
        request = CompletionRequest(
            request_id=self.rng.randbytes(8).hex(), model=model,
            messages=tuple(ChatMessage(role, content)
                           for role, content in judge_messages(question, answer_a, answer_b)),
            max_tokens=self.params.judge_max_tokens, temperature=0.0,
            timeout=self.params.judge_timeout)
        parts: list[str] = []

        async def collect(chunk: Chunk) -> None:
            parts.append(chunk.text)

        try:
            with trio.fail_after(self.params.judge_timeout):
                await engine.generate(request, collect)
        except (EngineError, trio.TooSlowError) as exc:
            raise DuelError(f"the judge's engine failed: {exc!r}") from None
        finally:
            self.on_engine_done()
        return parse_verdict("".join(parts))

    # ---- ratings ------------------------------------------------------------------------
    def ratings(self) -> dict[str, PeerRecord]:
        """Ratings from the duels this node requested."""
        return self.local_ratings.table()


class ChainRatings:
    """Ratings from every duel settled on a chain's best branch, so every replica agrees.

    Scans new blocks incrementally; starts over after a reorganisation below its last scan.
    """

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._ratings = Ratings()
        self._height = 0
        self._last: bytes | None = None

    def table(self) -> dict[str, PeerRecord]:
        """Every rated peer's wins, losses, ties and rating, as of the chain's tip."""
        chain = self.chain
        if self._height and (self._height > chain.height
                             or chain.canonical_id(self._height) != self._last):
            self._ratings, self._height = Ratings(), 0
        for block in chain.canonical_blocks(self._height + 1, chain.height - self._height):
            for envelope in block.txs:
                # blocks on the chain are verified: decode without checking signatures again
                tx = decode(decode(envelope, expect=Signed).body)
                if isinstance(tx, DuelSettlement):
                    if tx.winner:
                        self._ratings.record(tx.winner, tx.loser)
                    else:
                        record = unseal_record(tx.evidence)
                        self._ratings.record(*record.executors, tie=True)
        self._height = chain.height
        self._last = chain.canonical_id(chain.height)
        return self._ratings.table()


def unseal_record(evidence: bytes) -> DuelRecord:
    """The duel record inside verified settlement evidence."""
    ev = decode(evidence, expect=DuelEvidence)
    record: DuelRecord = decode(decode(ev.record, expect=Signed).body, expect=DuelRecord)
    return record
