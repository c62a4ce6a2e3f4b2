"""In-memory networks of real nodes with simulated engines, in trio's virtual time."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trio
from trio.testing import MockClock

from .._compat import TaskStatus
from ..clock import SIM_EPOCH, trio_wall_clock
from ..config import (
    DEFAULT_DISPATCH,
    DispatchParams,
    DuelParams,
    MembershipParams,
    NodeConfig,
    ServerParams,
)
from ..engines import Chunk, CompletionRequest, Engine, SimEngine, Usage, get_profile
from ..errors import ConfigError
from ..identity import Identity
from ..ledger import Allocation, Genesis
from ..market import CreditBook, FixedStake, Policy, get_policy
from ..membership import LocalState
from ..node import Node
from ..overlay import MemoryNetwork
from ._determinism import seed_trio_scheduler
from .assemble import sim_config, sim_node
from .processes import per_node as _each

__all__ = ["DEFAULT_MODEL", "FAST_MEMBERSHIP", "MemoryTestnet"]

DEFAULT_MODEL = "Qwen/Qwen3-8B"
#: membership timing of in-memory testnets (virtual seconds)
FAST_MEMBERSHIP = MembershipParams(heartbeat_interval=1.0, suspect_timeout=2.5,
                                   peer_timeout=5.0)


class MemoryTestnet:
    """``n`` real ``Node``\\ s over a ``MemoryNetwork``.

    Each node has one ``SimEngine``. It runs under trio's virtual
    clock (with pytest-trio, the test takes the ``autojump_clock`` fixture), where a minute
    of network time takes milliseconds and every run of a seed is the same::

        async with MemoryTestnet(4, accept_frequency=[0.0, 1.0, 1.0, 1.0]) as net:
            text, usage = await net.nodes[0].complete(net.request("r1"))
            assert net.nodes[0].dispatcher.stats["offloaded"] == 1

    Per-node settings take one value for all nodes or a list with one per node.
    Credits: a shared in-memory ``CreditBook`` (``net.book``), or,
    with ``ledger=True``, a genesis (``net.genesis``) and each node's real ledger
    (chains on disk under ``data_dir``, required then). ``stake`` pins each node's stake
    (default: nodes re-target it from their load, as in production). ``clock_skew`` offsets
    a node's wall clock (seconds); ``engine_wrapper(k, engine)`` may wrap node ``k``'s
    engine (to inject faults), ``policy_wrapper(k, policy)`` its policy (see
    ``PolicyWrapper``), and ``local_state(k, node)`` return what it
    announces instead of the truth (a liar); ``dispatch`` sets the dispatcher's knobs.
    Entering the block waits until every node sees every other.
    """

    def __init__(
        self,
        n: int = 4,
        *,
        model: str = DEFAULT_MODEL,
        profile: str | Sequence[str] = "h100/qwen3-8b",
        accept_frequency: float | Sequence[float] = 1.0,
        offload_frequency: float | Sequence[float] = 1.0,
        queue_frequency: float | Sequence[float] = 0.5,
        target_token_usage: float | Sequence[float] = 0.5,
        policy: str | Sequence[str] = "default_sglang",
        credit: float | Sequence[float] = 100.0,
        stake: float | Sequence[float] | None = None,
        ledger: bool = False,
        data_dir: Path | None = None,
        p_inspect: float = 0.0,
        seed: int = 0,
        latency: float = 0.002,
        membership: MembershipParams = FAST_MEMBERSHIP,
        stream_interval: int = 8,
        network_id: str = "sim",
        converge_within: float = 60.0,
        real_time: bool = False,
        clock_skew: float | Sequence[float] = 0.0,
        engine_wrapper: Callable[[int, SimEngine], Engine] | None = None,
        policy_wrapper: Callable[[int, Policy], Policy] | None = None,
        dispatch: DispatchParams | Sequence[DispatchParams] = DEFAULT_DISPATCH,
        local_state: Callable[[int, Node], LocalState] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"n: must be at least 1, got {n}")
        if ledger and data_dir is None:
            raise ConfigError("data_dir: required with ledger=True (each node keeps a chain)")
        self.n = n
        self.model = model
        self.profiles = _each(profile, n, "profile")
        self.accept = _each(accept_frequency, n, "accept_frequency")
        self.offload = _each(offload_frequency, n, "offload_frequency")
        self.queue = _each(queue_frequency, n, "queue_frequency")
        self.targets = _each(target_token_usage, n, "target_token_usage")
        self.policies = _each(policy, n, "policy")
        self.credits = _each(credit, n, "credit")
        self.stakes = _each(stake, n, "stake") if stake is not None else None
        self.use_ledger = ledger
        self.data_dir = data_dir
        self.p_inspect = p_inspect
        self.seed = seed
        self.latency = latency
        self.membership = membership
        self.stream_interval = stream_interval
        self.network_id = network_id
        self.converge_within = converge_within
        self.real_time = real_time
        self.skews = _each(clock_skew, n, "clock_skew")
        self.engine_wrapper = engine_wrapper
        self.policy_wrapper = policy_wrapper
        self.dispatch = _each(dispatch, n, "dispatch")
        self.local_state = local_state
        self.identities = [Identity.from_seed(random.Random(seed * 1000 + i).randbytes(32))
                           for i in range(n)]
        self.nodes: list[Node] = []
        self.engines: list[SimEngine] = []
        self.book: CreditBook | None = None if ledger else CreditBook(shared=True)
        self.genesis: Genesis | None = None
        self._network: MemoryNetwork | None = None
        self._scopes: dict[int, trio.CancelScope] = {}
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def network(self) -> MemoryNetwork:
        """The in-memory network (latency, loss, partitions: see MemoryNetwork)."""
        if self._network is None:
            raise RuntimeError("the testnet is not running")
        return self._network

    # ---- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if not self.real_time and not isinstance(trio.lowlevel.current_clock(), MockClock):
            raise ConfigError(
                "MemoryTestnet runs in trio's virtual time, but this trio run has a real "
                "clock: with pytest-trio, add the autojump_clock fixture to the test's "
                "arguments (trio.run: clock=MockClock(autojump_threshold=0)); pass "
                "real_time=True to run on the wall clock on purpose")
        seed_trio_scheduler(self.seed)
        if self.use_ledger:
            self.genesis = Genesis(
                network=self.network_id, time=SIM_EPOCH, slot_length=2.0,
                allocations=tuple(Allocation.of_credit(ident.peer_id, c, min(c, 10.0))
                                  for ident, c in zip(self.identities, self.credits,
                                                      strict=True)))
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._network = await self._stack.enter_async_context(
                MemoryNetwork(seed=self.seed, latency=self.latency))
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            for k in range(self.n):
                await self.start_node(k)
            await self.wait_converged(self.converge_within)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(exc_type, exc, tb)

    def config(self, k: int) -> NodeConfig:
        """Node ``k``'s config (bootstrap through node 0)."""
        boot = (self.nodes[0].addresses[0],) if k and self.nodes else ()
        return sim_config(
            f"node{k}", self.model, membership=self.membership, network_id=self.network_id,
            bootstrap=boot,
            server_params=ServerParams(policy=self.policies[k],
                                       offload_frequency=self.offload[k],
                                       queue_frequency=self.queue[k],
                                       accept_frequency=self.accept[k]),
            target_token_usage=self.targets[k], duel=DuelParams(p_inspect=self.p_inspect),
            dispatch=self.dispatch[k],
            data_dir=(self.data_dir or Path(".wwwserve")) / f"node{k}")

    async def start_node(self, k: int) -> Node:
        """Start node ``k`` (again, after ``stop_node()``: same identity, fresh engine)."""
        assert self._nursery is not None
        ident = self.identities[k]
        engine = SimEngine(get_profile(self.profiles[k]), models=(self.model,),
                           seed=self.seed * 1000 + k, stream_interval=self.stream_interval)
        credit = None
        if self.book is not None:
            credit = self.book.open(ident.peer_id, self.credits[k], 0.0)
        served: Engine = engine if self.engine_wrapper is None else self.engine_wrapper(k, engine)
        config = self.config(k)
        policy = get_policy(config.server_params)
        if self.stakes is not None:
            policy = FixedStake(policy, self.stakes[k])
        if self.policy_wrapper is not None:
            policy = self.policy_wrapper(k, policy)
        announce: Callable[[], LocalState] | None = None
        if self.local_state is not None:
            state_of, this = self.local_state, k

            def announce() -> LocalState:
                return state_of(this, node)

        node = sim_node(config, identity=ident, network=self.network, policy=policy,
                        engines={self.model: served}, credit=credit, genesis=self.genesis,
                        clock=trio_wall_clock(SIM_EPOCH + self.skews[k]),
                        local_state=announce, rng=random.Random(self.seed * 1000 + k))
        await self._nursery.start(self._run, k, node)
        if k < len(self.nodes):
            self.nodes[k], self.engines[k] = node, engine
        else:
            self.nodes.append(node)
            self.engines.append(engine)
        return node

    async def _run(self, k: int, node: Node, *,
                   task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scopes[k] = scope
            await node.run(task_status=task_status)

    def stop_node(self, k: int) -> None:
        """Stop node ``k`` (its tasks are cancelled; peers see it time out)."""
        scope = self._scopes.pop(k, None)
        if scope is not None:
            scope.cancel()

    def running(self, k: int) -> bool:
        """True while node ``k`` runs."""
        return k in self._scopes

    async def wait_converged(self, within: float) -> None:
        """Wait (virtual time) until every running node sees every other running node."""
        live = [k for k in range(len(self.nodes)) if self.running(k)]
        ids = {self.nodes[k].peer_id for k in live}
        with trio.fail_after(within):
            # (virtual time: polling the tables costs nothing)
            while not all(ids - {self.nodes[k].peer_id} <= set(  # noqa: ASYNC110
                    self.nodes[k].peers) for k in live):
                await trio.sleep(self.membership.heartbeat_interval / 2)
        # stakes are re-targeted every second and travel with the next heartbeats
        await trio.sleep(3 * self.membership.heartbeat_interval + 1.0)

    # ---- requests ---------------------------------------------------------------------------

    def request(self, request_id: str, *, prompt_tokens: int = 500, max_tokens: int = 200,
                **kw: Any) -> CompletionRequest:
        """A completion request for the testnet's model (fixed output length)."""
        return CompletionRequest(request_id=request_id, model=self.model,
                                 prompt="x" * (4 * prompt_tokens), max_tokens=max_tokens,
                                 ignore_eos=True, **kw)

    async def burst(self, k: int, count: int, *, prefix: str = "r",
                    **kw: Any) -> list[tuple[str, Usage]]:
        """Send ``count`` requests at once to node ``k``; their (text, usage) in order."""
        out: list[tuple[str, Usage] | None] = [None] * count

        async def one(i: int) -> None:
            out[i] = await self.nodes[k].complete(self.request(f"{prefix}{i}", **kw))

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        return [r for r in out if r is not None]

    async def stream(self, k: int, request: CompletionRequest) -> list[Chunk]:
        """Node ``k``'s streamed chunks for ``request``."""
        chunks: list[Chunk] = []

        async def collect(chunk: Chunk) -> None:
            chunks.append(chunk)

        await self.nodes[k].submit(request, collect)
        return chunks
