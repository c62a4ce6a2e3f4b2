"""Multi-process testnets on loopback: the process supervisor behind ``wwwserve testnet``.

A ``ProcessTestnet`` starts N ``wwwserve node`` processes, each in front of its own
``wwwserve sim-engine`` process (or of engine URLs you give), with fresh keys, a private
genesis, bootstrap through the first node, and waits until every node sees every other::

    async with ProcessTestnet(3, root=Path("/tmp/tn")) as net:
        client = openai.AsyncOpenAI(base_url=net.nodes[0].gateway + "/v1", api_key="x")
        ...
        print(await net.status(0))   # the node's /status JSON

Leaving the block stops every child (SIGTERM, then SIGKILL after a grace period), also on
an error or Ctrl-C. ``workload`` drives requests through the gateways and
``report`` summarises them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import trio
import yaml

from ..errors import ConfigError, WWWServeError
from ..identity import load_or_create_identity

__all__ = [
    "ChildProcess",
    "ProcessTestnet",
    "TestnetError",
    "TestnetNode",
    "rss_bytes",
]

DEFAULT_MODEL = "Qwen/Qwen3-8B"
#: how long a child gets between SIGTERM and SIGKILL
STOP_GRACE = 10.0


class TestnetError(WWWServeError):
    """A testnet could not be started (a child exited early, nodes did not converge)."""


class ChildProcess:
    """One ``python -m wwwserve`` child process speaking JSON lines on stdout.

    It waits for the child's ``started`` event and keeps the last ``keep`` events. ``log``
    (a path) receives the child's stderr; by default it is inherited. ``prefix`` runs the
    command under another one that execs it (``ip netns exec NAME``: a network namespace).
    """

    def __init__(self, args: Sequence[str], *, log: Path | None = None,
                 keep: int = 1000, prefix: Sequence[str] = ()) -> None:
        #: the ``wwwserve`` command's arguments, and what runs it
        self.command = list(args)
        self.prefix = list(prefix)
        self.args = [*self.prefix, sys.executable, "-m", "wwwserve", *args]
        self.log = log
        self.keep = keep
        self.events: list[dict[str, Any]] = []
        self.started: dict[str, Any] = {}
        self._started = trio.Event()
        self._changed = trio.Event()
        self._exited = trio.Event()
        self.proc: trio.Process | None = None
        self._log_file: IO[bytes] | None = None

    async def start(self, nursery: trio.Nursery, within: float = 30.0) -> dict[str, Any]:
        """Start the process and return its ``started`` event.

        Raises ``TestnetError`` if the child exits or stays silent for ``within`` s.
        """
        stderr: Any = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = stderr = open(self.log, "ab")  # noqa: ASYNC230, SIM115 (closed in stop)
        self.proc = await nursery.start(functools.partial(
            trio.run_process, self.args, stdout=-1, stderr=stderr, check=False))
        nursery.start_soon(self._read)
        with trio.move_on_after(within):
            async with trio.open_nursery() as waiting:
                async def exited() -> None:
                    await self._exited.wait()
                    waiting.cancel_scope.cancel()

                waiting.start_soon(exited)
                await self._started.wait()
                waiting.cancel_scope.cancel()
        if not self._started.is_set():
            why = "exited" if self._exited.is_set() else f"did not start within {within:g} s"
            where = f" (its log: {self.log})" if self.log else ""
            await self.stop()
            raise TestnetError(f"`wwwserve {' '.join(self.command)}` {why}{where}")
        return self.started

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buf = b""
        try:
            async for chunk in self.proc.stdout:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._line(line)
        finally:
            self._exited.set()
            self._changed.set()

    def _line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("event") == "started" and not self._started.is_set():
            self.started = event
            self._started.set()
        self.events.append(event)
        if len(self.events) > self.keep:
            del self.events[: len(self.events) - self.keep]
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[ChildProcess], bool], within: float) -> None:
        """Wait until ``predicate(self)`` holds; re-checked on each event (TooSlowError)."""
        with trio.fail_after(within):
            while not predicate(self):
                if self._exited.is_set():
                    raise TestnetError(f"`wwwserve {' '.join(self.command)}` exited")
                await self._changed.wait()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start)."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.returncode is None

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL; returns the exit code."""
        try:
            if self.proc is None:
                return None
            with trio.CancelScope(shield=True):
                if self.proc.returncode is None:
                    self.proc.send_signal(signal.SIGTERM)
                    with trio.move_on_after(grace):
                        await self.proc.wait()
                    if self.proc.returncode is None:
                        self.proc.send_signal(signal.SIGKILL)
                        await self.proc.wait()
            return self.proc.returncode
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None


def rss_bytes(pid: int, *, peak: bool = False) -> int | None:
    """Resident memory of a process (its peak with ``peak``), from /proc; None if unknown."""
    key = "VmHWM:" if peak else "VmRSS:"
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class TestnetNode:
    """One node of a ``ProcessTestnet`` and its engine."""

    index: int
    name: str
    config: Path
    engine_url: str
    profile: str | None
    process: ChildProcess
    engine: ChildProcess | None = None
    peer_id: str = ""
    addresses: tuple[str, ...] = ()
    gateway: str = ""

    def peers(self) -> set[str]:
        """The peers this node reported last (from its membership events)."""
        return _peers_of(self.process)


def per_node(value: Any, n: int, what: str) -> list[Any]:
    """``value`` for each of ``n`` nodes: a list of exactly ``n``, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{what}: expected one value per node ({n}), got {len(value)}")
        return list(value)
    return [value] * n


class ProcessTestnet:
    """N node processes on loopback with a private genesis; see the module docstring.

    ``engines``: engine base URLs (one for all nodes, or one per node); empty means one
    ``wwwserve sim-engine`` process per node with ``profiles`` (one for all or one per node).
    ``target_token_usage``, ``accept_frequency`` and ``profiles`` may be per node;
    ``count_admitted`` is every model's ``dispatch_params.count_admitted``.
    ``config`` is merged into every node's YAML (top-level sections, shallow per section).
    ``netns`` runs node ``k`` and its engine in the network namespace ``netns[k]`` (made by
    the caller), listening for peers on ``hosts[k]``; its gateway is then only reachable
    from inside that namespace.
    """

    def __init__(
        self,
        n: int,
        *,
        root: Path,
        engines: Sequence[str] = (),
        profiles: str | Sequence[str] = "h100/qwen3-8b",
        model: str = DEFAULT_MODEL,
        network_id: str = "testnet",
        ledger: bool = True,
        initial_credit: float = 1000.0,
        initial_staked: float = 10.0,
        target_token_usage: float | Sequence[float] = 0.5,
        count_admitted: bool = True,
        accept_frequency: float | Sequence[float] = 1.0,
        offload_frequency: float = 1.0,
        queue_frequency: float = 0.5,
        p_inspect: float = 0.1,
        heartbeat_interval: float | None = None,
        slot_length: float = 2.0,
        config: Mapping[str, Mapping[str, Any]] | None = None,
        start_within: float = 60.0,
        netns: Sequence[str] = (),
        hosts: Sequence[str] = (),
    ) -> None:
        if n < 1:
            raise ConfigError(f"nodes: must be at least 1, got {n}")
        if engines and len(engines) not in (1, n):
            raise ConfigError(f"engines: give one URL for all nodes or one per node ({n}), "
                              f"got {len(engines)}")
        if len(netns) not in (0, n) or len(hosts) not in (0, n):
            raise ConfigError(f"netns and hosts: give one per node ({n}) or none")
        self.n = n
        self.netns = list(netns)
        self.hosts = list(hosts) or ["127.0.0.1"] * n
        self.root = Path(root).resolve()
        self.engine_urls = [engines[i % len(engines)] for i in range(n)] if engines else []
        self.profiles = per_node(profiles, n, "profiles")
        self.targets = per_node(target_token_usage, n, "target_token_usage")
        self.count_admitted = count_admitted
        self.accepts = per_node(accept_frequency, n, "accept_frequency")
        self.model = model
        self.network_id = network_id
        self.ledger = ledger
        self.initial_credit = initial_credit
        self.initial_staked = initial_staked
        self.offload_frequency = offload_frequency
        self.queue_frequency = queue_frequency
        self.p_inspect = p_inspect
        # every node hears every heartbeat: on a small machine the interval grows with N
        self.heartbeat_interval = (heartbeat_interval if heartbeat_interval is not None
                                   else max(0.5, 0.2 * n))
        self.slot_length = slot_length
        self.extra = {k: dict(v) for k, v in (config or {}).items()}
        self.start_within = start_within
        self.nodes: list[TestnetNode] = []
        self.genesis_path: Path | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        try:
            self._nursery = await self._stack.enter_async_context(trio.open_nursery())
            await self._start(self._nursery)
        except BaseException as exc:
            await self._close(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        return await self._close(exc_type, exc, tb)

    async def _close(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                     tb: TracebackType | None) -> bool | None:
        with trio.CancelScope(shield=True):
            await self.stop_all()
        assert self._stack is not None
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        stack, self._stack = self._stack, None
        return await stack.__aexit__(exc_type, exc, tb)

    async def stop_all(self) -> None:
        """Stop every node, then every engine (concurrently within each group)."""
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(node.process.stop)
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                if node.engine is not None:
                    nursery.start_soon(node.engine.stop)

    async def _start(self, nursery: trio.Nursery) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        names = [f"node{i}" for i in range(self.n)]
        urls = list(self.engine_urls)
        engines: list[ChildProcess | None] = [None] * self.n
        if not urls:
            urls = [""] * self.n

            async def engine(i: int) -> None:
                proc = ChildProcess(["sim-engine", "--profile", self.profiles[i], "--model",
                                     self.model, "--port", "0", "--seed", str(i), "--json"],
                                    log=self.root / names[i] / "engine.log",
                                    prefix=self._prefix(i))
                engines[i] = proc
                urls[i] = (await proc.start(nursery, self.start_within))["url"]

            async with trio.open_nursery() as starting:
                for i in range(self.n):
                    starting.start_soon(engine, i)
        for i, name in enumerate(names):
            cfg = self.root / name / "node.yaml"
            self.nodes.append(TestnetNode(
                index=i, name=name, config=cfg, engine_url=urls[i],
                profile=None if self.engine_urls else self.profiles[i],
                process=ChildProcess(["node", "--json-events", str(cfg)],
                                     log=self.root / name / "node.log", prefix=self._prefix(i)),
                engine=engines[i]))
        peer_ids = [load_or_create_identity(self.root / name / "node.key").peer_id
                    for name in names]
        if self.ledger:
            self.genesis_path = self._write_genesis(peer_ids)
        self._write_config(self.nodes[0], bootstrap=[])
        await self._start_node(nursery, self.nodes[0])
        boot = [self.nodes[0].addresses[0]]
        for node in self.nodes[1:]:
            self._write_config(node, bootstrap=boot)
        async with trio.open_nursery() as starting:
            for node in self.nodes[1:]:
                starting.start_soon(self._start_node, nursery, node)
        await self.wait_converged(self.start_within)

    def _prefix(self, k: int) -> list[str]:
        return ["ip", "netns", "exec", self.netns[k]] if self.netns else []

    async def _start_node(self, nursery: trio.Nursery, node: TestnetNode) -> None:
        started = await node.process.start(nursery, self.start_within)
        node.peer_id = started["peer_id"]
        node.addresses = tuple(started["addresses"])
        node.gateway = started["gateway"] or ""

    async def wait_converged(self, within: float) -> None:
        """Wait until every running node's table holds every other running node."""
        live = [n for n in self.nodes if n.process.running]
        ids = {n.peer_id for n in live}
        def sees_all(me: str) -> Callable[[ChildProcess], bool]:
            return lambda proc: ids - {me} <= _peers_of(proc)

        try:
            with trio.fail_after(within):
                for node in live:
                    await node.process.wait_for(sees_all(node.peer_id), math.inf)
        except trio.TooSlowError:
            missing = {n.name: len(ids - {n.peer_id} - n.peers()) for n in live}
            raise TestnetError(f"the nodes did not all see each other within {within:g} s "
                               f"(peers missing per node: {missing})") from None

    def _write_genesis(self, peer_ids: Sequence[str]) -> Path:
        from ..ledger import Allocation, Genesis

        genesis = Genesis(
            network=self.network_id, time=float(int(time.time())), slot_length=self.slot_length,
            allocations=tuple(Allocation.of_credit(pid, self.initial_credit,
                                                   self.initial_staked) for pid in peer_ids))
        path = self.root / "genesis.yaml"
        path.write_text(genesis.to_yaml())
        return path

    def _write_config(self, node: TestnetNode, *, bootstrap: list[str]) -> None:
        hb = self.heartbeat_interval
        data: dict[str, Any] = {
            "server_params": {"ip": self.hosts[node.index], "port": 0,
                              "offload_frequency": self.offload_frequency,
                              "queue_frequency": self.queue_frequency,
                              "accept_frequency": self.accepts[node.index]},
            "ledger_params": {"initial_credit": self.initial_credit,
                              "initial_staked": self.initial_staked},
            "models": [{"model_path": self.model, "base_url": node.engine_url,
                        "scrape_interval": 0.5,
                        "dispatch_params": {"target_token_usage": self.targets[node.index],
                                            "count_admitted": self.count_admitted}}],
            "node": {"name": node.name, "data_dir": str(node.config.parent),
                     "key_path": str(node.config.parent / "node.key")},
            "network": {"network_id": self.network_id, "bootstrap": bootstrap,
                        **({"genesis": str(self.genesis_path)} if self.genesis_path else {})},
            "gateway": {"port": 0},
            "membership": {"heartbeat_interval": hb, "suspect_timeout": 4 * hb,
                           "peer_timeout": 8 * hb},
            "duel": {"p_inspect": self.p_inspect},
        }
        for section, values in self.extra.items():
            base = data.get(section)
            data[section] = {**base, **values} if isinstance(base, dict) else values
        node.config.parent.mkdir(parents=True, exist_ok=True)
        node.config.write_text(yaml.safe_dump(data, sort_keys=False))

    def kill_node(self, k: int) -> None:
        """SIGKILL node ``k``'s process (no goodbye; its engine keeps running)."""
        self.nodes[k].process.kill()

    async def restart_node(self, k: int) -> None:
        """Start node ``k`` again from its config (same key, its chain from disk) after it
        stopped or was killed; returns once it runs (not once peers see it)."""
        node = self.nodes[k]
        await node.process.stop()  # reaps a killed one and closes its log
        assert self._nursery is not None
        node.process = ChildProcess(node.process.command, log=node.process.log,
                                    prefix=node.process.prefix)
        await self._start_node(self._nursery, node)

    # ---- inspection ------------------------------------------------------------------------

    async def status(self, k: int) -> dict[str, Any]:
        """Node ``k``'s ``/status`` JSON (see docs/provider-node.md)."""
        return await _get_json(self.nodes[k].gateway + "/status")

    async def metrics(self, k: int) -> str:
        """Node ``k``'s ``/metrics`` text (Prometheus exposition)."""
        return await _get_text(self.nodes[k].gateway + "/metrics")

    def rss(self, k: int, *, peak: bool = False) -> int | None:
        """Resident memory of node ``k``'s process in bytes (``peak``: its high-water mark)."""
        pid = self.nodes[k].process.pid
        return rss_bytes(pid, peak=peak) if pid is not None else None


def _peers_of(proc: ChildProcess) -> set[str]:
    for ev in reversed(proc.events):
        if "peers" in ev:
            return set(ev["peers"])
    return set()


async def _get_text(url: str) -> str:
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        resp = await client.get(url)
        resp.raise_for_status()
        return resp.text


async def _get_json(url: str) -> dict[str, Any]:
    data = json.loads(await _get_text(url))
    if not isinstance(data, dict):
        raise TestnetError(f"{url}: expected a JSON object")
    return data


def default_profiles(n: int) -> list[str]:
    """Engine profiles of a default testnet: the hot quarter on small GPUs, the rest big."""
    hot = max(1, n // 4)
    big = ("h100/qwen3-8b", "a100-80g/qwen3-8b")
    return ["rtx3090/qwen3-8b" if i < hot else big[i % 2] for i in range(n)]


def default_targets(n: int) -> list[float]:
    """Target token usage of a default testnet: the hot quarter offloads early."""
    hot = max(1, n // 4)
    return [0.1 if i < hot else 0.8 for i in range(n)]


def environment() -> dict[str, Any]:
    """Facts about this machine for reports (CPUs, Python)."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
