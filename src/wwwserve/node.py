"""Node: one provider's participant in a wwwserve network.

A node composes its identity, an overlay (libp2p in the real world, memory in simulations),
gossip membership, its engines, a credit account and the dispatcher that decides where each
request runs. Later capabilities (ledger, gateway) plug in here.

Embedding::

    async with Node(load_config("node_configs/node1.yaml"), rng=random.Random()) as node:
        print(node.peer_id, node.addresses)
        async with node.membership.events() as events:
            async for event in events:
                print(event.kind.value, event.peer_id)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Self

import trio

from ._compat import TaskStatus
from .clock import WallClock, system_wall_clock
from .config import NodeConfig
from .duel.race import DuelRace
from .duel.ratings import PeerRecord
from .duel.service import ChainRatings, DuelService
from .engines import (
    Chunk,
    CompletionRequest,
    Emit,
    Engine,
    Scraped,
    SimEngine,
    Usage,
    get_profile,
)
from .engines.http import HTTPEngine
from .errors import ConfigError, leaves
from .evidence import DuelRecord, Outcome
from .http.gateway import Gateway
from .http.service import LedgerStatus, ModelStatus, NodeStatus, PeerRow, RatingRow
from .identity import Identity, load_or_create_identity
from .ledger import BlockStore, Chain, DuelSettlement, Genesis, VoteRecord, credits
from .ledger.service import LedgerAccount, LedgerService, ledger_view
from .market import CreditAccount, CreditBook, Dispatcher, LocalModel, Policy, get_policy
from .membership import LocalState, Membership, ModelLoad, PeerInfo
from .overlay import Overlay

__all__ = ["Node"]

logger = logging.getLogger(__name__)


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """True if ``group`` holds nothing but ``exc`` (and cancellations), however nested."""
    return all(e is exc or isinstance(e, trio.Cancelled) for e in leaves(group))


class Node:
    """A wwwserve node. Use ``async with Node(config, rng=...) as node:`` or
    ``nursery.start(node.run)``.

    Everything a node runs on is an input, given here and never changed after start:

    - ``rng``: every random choice the node makes (a seeded one makes a simulation
      reproducible; a real node passes ``random.Random()``);
    - ``policy``: its decisions (default: the one ``server_params.policy`` names; wrap it
      with ``FixedStake``, ``Draining``, ...);
    - ``engines``: engines by model name, instead of the ones the config describes;
    - ``overlay``: default a ``Libp2pOverlay`` listening on the
      config's address; pass a ``MemoryOverlay`` to simulate;
    - ``clock``: the wall clock (heartbeats, block slots); trio's clock drives timeouts;
    - ``identity``: default the key file the config names (created on first start);
    - ``credit``, ``genesis``, ``local_state``: a credit account, a genesis, and what the
      node announces, instead of the ones the config implies.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        rng: random.Random,
        policy: Policy | None = None,
        engines: Mapping[str, Engine] | None = None,
        overlay: Overlay | None = None,
        clock: WallClock = system_wall_clock,
        identity: Identity | None = None,
        local_state: Callable[[], LocalState] | None = None,
        credit: CreditAccount | None = None,
        genesis: Genesis | None = None,
    ) -> None:
        self.config = config
        self._identity = identity
        self._overlay = overlay
        self.wall_clock = clock
        self.rng = rng
        self.policy = policy if policy is not None else get_policy(config.server_params)
        self._local_state = local_state
        self._membership: Membership | None = None
        self._engines = dict(engines or {})
        self._credit = credit
        self._dispatcher: Dispatcher | None = None
        self._gateway: Gateway | None = None
        self._genesis = genesis
        self._ledger: LedgerService | None = None
        self._duels: DuelService | None = None
        self._chain_ratings: ChainRatings | None = None

    @property
    def identity(self) -> Identity:
        """This node's keypair (loaded on start if not given)."""
        if self._identity is None:
            self._identity = load_or_create_identity(self.config.node.identity_path)
        return self._identity

    @property
    def peer_id(self) -> str:
        """This node's peer ID (its name and its ledger account)."""
        return self.identity.peer_id

    @property
    def overlay(self) -> Overlay:
        """The overlay this node talks through."""
        if self._overlay is None:
            from .overlay import Libp2pOverlay

            self._overlay = Libp2pOverlay(self.identity, listen=self.config.listen_addrs,
                                          gossip_degree=self.config.network.gossip_degree)
        return self._overlay

    @property
    def addresses(self) -> tuple[str, ...]:
        """Addresses peers can dial (full multiaddrs), once started."""
        return self.overlay.addresses

    @property
    def membership(self) -> Membership:
        """Gossip membership (available once started)."""
        if self._membership is None:
            raise RuntimeError("node is not started")
        return self._membership

    @property
    def peers(self) -> Mapping[str, PeerInfo]:
        """The live peer table."""
        return self.membership.peers

    @property
    def dispatcher(self) -> Dispatcher:
        """The request dispatcher (available once started)."""
        if self._dispatcher is None:
            raise RuntimeError("node is not started")
        return self._dispatcher

    @property
    def gateway_url(self) -> str | None:
        """Base URL of the OpenAI-compatible gateway, once started (None if disabled)."""
        return self._gateway.url if self._gateway is not None else None

    @property
    def ledger(self) -> LedgerService | None:
        """The ledger replica (None on a node without a genesis), once started."""
        return self._ledger

    @property
    def duels(self) -> DuelService:
        """Duel-and-judge (available once started)."""
        if self._duels is None:
            raise RuntimeError("node is not started")
        return self._duels

    def ratings(self) -> dict[str, PeerRecord]:
        """Peers' duel ratings: from every settlement on the ledger (the same on every
        replica), or from this node's own duels on a node without a ledger."""
        if self._chain_ratings is not None:
            return self._chain_ratings.table()
        return self.duels.ratings()

    def _judge_engine(self) -> tuple[str, Engine] | None:
        if self._dispatcher is None:
            return None
        view = self._dispatcher.view()
        if not view.models:
            return None
        best = min(view.models, key=lambda m: (m.load.token_usage, m.load.queued)).name
        return best, next(m.engine for m in self._dispatcher.models if m.name == best)

    async def _check_duel_record(self, record: DuelRecord) -> str | None:
        """Why this node must not judge ``record`` (see ``Chain.record_problem()``),
        waiting a little for our chain to reach the record's checkpoint."""
        ledger = self._ledger
        assert ledger is not None
        chain = ledger.chain
        if chain.state.stake(record.requester) <= 0:
            return f"the requester {record.requester[-8:]} holds no stake"
        if record.anchor > chain.height + 2 * chain.genesis.finality_depth:
            return f"checkpoint {record.anchor} is far ahead of our chain ({chain.height})"
        with trio.move_on_after(self.config.duel.judge_timeout / 4):
            while chain.height < record.anchor:
                await ledger.wait_changed()
        return chain.record_problem(record)

    def _settle_duel(self, duel_id: str, outcome: Outcome, evidence: bytes) -> bool:
        ledger = self._ledger
        credit = self._credit
        if ledger is None or not isinstance(credit, LedgerAccount):
            return False
        rules = ledger.chain.genesis.rules
        return credit.submit(lambda nonce: DuelSettlement(
            network=ledger.network, requester=self.peer_id, duel_id=duel_id,
            winner=outcome.winner, loser=outcome.loser, reward=rules.duel_reward,
            loser_penalty_ppm=rules.duel_loser_ppm, majority=outcome.majority,
            minority=outcome.minority, silent=outcome.silent,
            minority_penalty_ppm=rules.duel_minority_ppm,
            silent_penalty_ppm=rules.duel_silent_ppm, evidence=evidence, nonce=nonce))

    def _load_genesis(self) -> Genesis | None:
        if self._genesis is None and self.config.network.genesis is not None:
            self._genesis = Genesis.load(self.config.network.genesis)
        g = self._genesis
        if g is not None and g.network != self.config.network.network_id:
            raise ConfigError(
                f"network.network_id is {self.config.network.network_id!r} but the genesis "
                f"is for network {g.network!r}")
        return g

    def _ledger_stakes(self) -> Mapping[str, float]:
        assert self._ledger is not None
        return {a: credits(v) for a, v in self._ledger.chain.state.stakes.items()}

    @property
    def credit(self) -> CreditAccount:
        """This node's credit account."""
        if self._credit is None:
            lp = self.config.ledger_params
            self._credit = CreditBook().open(self.peer_id, lp.initial_credit, lp.initial_staked)
        return self._credit

    def local_state(self) -> LocalState:
        """What this node announces in its heartbeats (``local_state`` if one was given,
        else ``true_state()``)."""
        if self._local_state is not None:
            return self._local_state()
        return self.true_state()

    def true_state(self) -> LocalState:
        """This node's models and their load, policy, stake and credit, as they are."""
        sp = self.config.server_params
        models: tuple[ModelLoad, ...] = ()
        if self._dispatcher is not None:
            # the last reading and what was admitted since (what the node decides on)
            loads = [(m.name, m.load()) for m in self._dispatcher.models]
            models = tuple(ModelLoad(model=name, token_usage=ld.token_usage, running=ld.running,
                                     queued=ld.queued) for name, ld in loads if ld.healthy)
        return LocalState(
            models=models,
            policy={
                "offload_frequency": sp.offload_frequency,
                "queue_frequency": sp.queue_frequency,
                "accept_frequency": sp.accept_frequency,
            },
            stake=self.credit.stake(),
            credit=self.credit.balance(),
        )

    def _local_models(self) -> list[LocalModel]:
        models = []
        for i, mc in enumerate(self.config.models):
            engine = self._engines.get(mc.model_path)
            if engine is None and mc.engine == "sim":
                try:
                    profile = get_profile(mc.sim_profile, mc.attention_backend)
                except ConfigError as exc:
                    raise ConfigError(f"models[{i}] ({mc.model_path}): {exc}") from None
                # read every scrape_interval, as a real engine's /metrics are
                engine = Scraped(SimEngine(profile, models=(mc.model_path,),
                                           seed=self.rng.randrange(1 << 30)),
                                 mc.scrape_interval)
            elif engine is None:
                engine = HTTPEngine(mc.base_url, mc.model_path, kind=mc.engine,
                                    served_model=mc.served_model_name,
                                    config_key=f"models[{i}]",
                                    api_key=mc.api_key, scrape_interval=mc.scrape_interval,
                                    timeout=self.config.gateway.request_timeout)
            self._engines[mc.model_path] = engine
            models.append(LocalModel(mc.model_path, engine,
                                     mc.dispatch_params.target_token_usage,
                                     mc.gen_params.defaults(),
                                     mc.dispatch_params.count_admitted))
        return models

    async def submit(self, request: CompletionRequest, emit: Emit) -> Usage:
        """Serve ``request`` (locally or on a peer), pushing its chunks to ``emit``."""
        return await self.dispatcher.submit(request, emit)

    # ---- what the gateway serves (wwwserve.http.service.NodeService) --------------------
    def models(self) -> set[str]:
        """Models served here or by any live peer."""
        return self.dispatcher.network_models()

    def healthy(self) -> bool:
        """True while a local engine is healthy or a peer is known."""
        return any(m.engine.load().healthy for m in self.dispatcher.models) or bool(self.peers)

    def status(self) -> NodeStatus:
        """A frozen snapshot of this node: loads, peers, counters, ledger heights, ratings."""
        dispatcher = self.dispatcher
        models = []
        for m in dispatcher.models:
            load = m.engine.load()
            models.append(ModelStatus(m.name, load.token_usage, load.running, load.queued,
                                      load.healthy))
        ledger = self._ledger
        ledger_status = None
        submitted = dispatcher.stats["payments_submitted"]
        confirmed = submitted  # a credit book settles at once
        if ledger is not None:
            chain = ledger.chain
            confirmed = chain.state.payments_made.get(self.peer_id, 0)
            ledger_status = LedgerStatus(
                height=chain.height, finalized_height=chain.finalized_height,
                pending=len(chain.pool), events={**chain.stats, **ledger.stats})
        return NodeStatus(
            peer_id=self.peer_id, name=self.config.node.name, addresses=tuple(self.addresses),
            credit=self.credit.balance(), stake=self.credit.stake(), models=tuple(models),
            peers=tuple(PeerRow(pid, info.status.value, info.stake, info.credit,
                                tuple(m.model for m in info.models))
                        for pid, info in sorted(self.peers.items())),
            dispatch=dict(dispatcher.stats), offload_delays=tuple(dispatcher.offload_delays),
            duels=dict(self.duels.stats),
            ratings={peer: RatingRow(rec.rating, rec.wins, rec.losses, rec.ties)
                     for peer, rec in self.ratings().items()},
            ledger=ledger_status,
            payments={"submitted": submitted, "confirmed": confirmed})

    def ledger_json(self, last: int, *, accounts: bool = True) -> dict[str, object] | None:
        """The ledger's JSON summary with its ``last`` blocks (and, with ``accounts``, every
        account); None without a ledger."""
        ledger = self._ledger
        if ledger is None:
            return None
        return ledger_view(ledger.chain, last=last, accounts=accounts, stats=ledger.stats)

    async def complete(self, request: CompletionRequest) -> tuple[str, Usage]:
        """Serve ``request`` and return its whole text and usage."""
        parts: list[str] = []

        async def collect(chunk: Chunk) -> None:
            parts.append(chunk.text)

        usage = await self.submit(request, collect)
        return "".join(parts), usage

    async def __aenter__(self) -> Self:
        overlay = self.overlay
        if overlay.peer_id != self.peer_id:
            raise ConfigError("the overlay's peer id does not match the node's identity")
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None
        try:
            await self._stack.enter_async_context(overlay)
            nursery = await self._stack.enter_async_context(trio.open_nursery())
            self._nursery = nursery
            net = self.config.network
            self._membership = Membership(
                overlay, self.identity, network_id=net.network_id,
                params=self.config.membership, bootstrap=net.bootstrap,
                target_degree=net.target_degree, wall_clock=self.wall_clock, rng=self.rng,
                local_state=self.local_state,
            )
            genesis = self._load_genesis()
            if genesis is not None:
                chain = Chain(genesis)
                store = BlockStore(self.config.node.data_dir / "blocks")
                self._ledger = LedgerService(
                    overlay, self.identity, chain, store=store,
                    vote_record=VoteRecord(self.config.node.data_dir / "last_vote"),
                    wall_clock=self.wall_clock,
                    peers=lambda: self.membership.peers, rng=self.rng)
                self._ledger.load()
                if self._credit is None:
                    self._credit = LedgerAccount(self._ledger)
                await nursery.start(self._ledger.run)
            models = self._local_models()
            for engine in {id(e): e for e in self._engines.values()}.values():
                await nursery.start(engine.run)
            stakes = self._ledger_stakes if self._ledger is not None else None
            self._duels = DuelService(
                overlay=overlay, identity=self.identity, network=net.network_id,
                params=self.config.duel, peers=lambda: self.membership.peers,
                judge_engine=self._judge_engine, rng=self.rng, stakes=stakes,
                settle=self._settle_duel if self._ledger is not None else None,
                on_engine_done=lambda: self.dispatcher.notify(),
                draw=self._ledger.chain.judge_draw if self._ledger is not None else None,
                check_record=self._check_duel_record if self._ledger is not None else None)
            if self._ledger is not None:
                self._chain_ratings = ChainRatings(self._ledger.chain)
            await nursery.start(self._duels.run)
            self._dispatcher = Dispatcher(
                overlay=overlay, peer_id=self.peer_id, peers=lambda: self.membership.peers,
                models=models, policy=self.policy, params=self.config.dispatch,
                credit=self.credit, rng=self.rng, stakes=stakes, duels=DuelRace(self._duels),
                identity=self.identity, id_prefix=f"{int(self.wall_clock() * 1e6):x}")
            await nursery.start(self._dispatcher.run)
            await nursery.start(self._membership.run)
            nursery.start_soon(self._notify_on_membership)
            if self.config.gateway.enabled:
                self._gateway = Gateway(self, self.config.gateway)
                await nursery.start(self._gateway.run)
        except BaseException as exc:
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            try:
                await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                # the nursery wrapped our start-up failure; raise the failure itself
                if _only(group, exc):
                    raise exc from None
                raise
            raise
        logger.info("node %s up at %s", self.peer_id, ", ".join(overlay.addresses))
        return self

    async def _notify_on_membership(self) -> None:
        async with self.membership.events() as events:
            async for _event in events:
                self.dispatcher.notify()

    async def __aexit__(self, *exc_info: object) -> bool | None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return await self._stack.__aexit__(*exc_info)  # type: ignore[arg-type]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (for ``nursery.start(node.run)``)."""
        async with self:
            task_status.started()
            await trio.sleep_forever()
