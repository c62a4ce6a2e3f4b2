"""Policies: the decisions a node makes about requests and stake, pluggable by name.

The default is the WWW.Serve authors' rule: run locally while a local
model is under its ``target_token_usage``; otherwise offload with ``offload_frequency``; else
queue locally with ``queue_frequency``; else wait for a change and decide again. Accept a
peer's request with ``accept_frequency`` when the node's own users are not waiting and a
model is idle. A config names a policy (``server_params.policy``): a registered name
(``default_sglang``, ``default_vllm``) or a dotted path ``package.module:Class`` whose class
takes the ``ServerParams``.

Wrappers change a policy's decisions without touching it: ``FixedStake`` (a stake
of exactly so many credits), ``ServePeersOnly`` (run none of the node's own users'
requests), ``Draining`` (a node about to leave). Pass the result to
``Node(config, policy=...)``.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from ..config import ServerParams
from ..engines import EngineLoad
from ..errors import ConfigError

__all__ = ["DefaultPolicy", "Draining", "FixedStake", "NodeView", "Policy", "PolicyWrapper",
           "ServePeersOnly", "SpeedAwarePolicy", "get_policy", "register_policy"]


@dataclass(frozen=True, slots=True)
class ModelView:
    """One healthy local model as a policy sees it."""

    name: str
    load: EngineLoad
    target_token_usage: float

    @property
    def under_target(self) -> bool:
        """Room for one more request now (under target usage and nothing queued)."""
        return self.load.token_usage < self.target_token_usage and self.load.queued == 0


@dataclass(frozen=True, slots=True)
class NodeView:
    """The node's state at a decision: its healthy local models for the request, its own
    users' requests still waiting for a decision, its credit and stake."""

    models: tuple[ModelView, ...]
    own_waiting: int
    balance: float
    stake: float
    #: how many times faster than the node's own engine the fastest live peer it has
    #: measured answers (>= 1; 1 while unmeasured); see ``SpeedAwarePolicy``
    speed_ratio: float = 1.0


class Policy(Protocol):
    """Decision hooks of a node (see the module docs for the default behaviour)."""

    def run_locally(self, view: NodeView) -> str | None:
        """A local model to run the request on now, or None."""
        ...

    def offload(self, view: NodeView, rng: random.Random) -> bool:
        """Try to offload the request to a peer?"""
        ...

    def queue(self, view: NodeView, rng: random.Random) -> str | None:
        """A local model to queue the request on, or None to wait and decide again."""
        ...

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """The local model to run a peer's request on, or None to refuse it."""
        ...

    def target_stake(self, view: NodeView) -> float:
        """How much credit to keep staked (re-targeted every second)."""
        ...


class DefaultPolicy:
    """The authors' rule with the node's three frequencies; stake follows idleness."""

    def __init__(self, params: ServerParams, *, stake_fraction: float = 0.5) -> None:
        self.offload_frequency = params.offload_frequency
        self.queue_frequency = params.queue_frequency
        self.accept_frequency = params.accept_frequency
        self.stake_fraction = stake_fraction

    def run_locally(self, view: NodeView) -> str | None:
        """The least loaded model under its target, if any."""
        free = [m for m in view.models if m.under_target]
        return min(free, key=lambda m: m.load.token_usage).name if free else None

    def offload(self, view: NodeView, rng: random.Random) -> bool:
        """With ``offload_frequency``."""
        return rng.random() < self.offload_frequency

    def queue(self, view: NodeView, rng: random.Random) -> str | None:
        """With ``queue_frequency``, the model with the shortest queue."""
        if not view.models or rng.random() >= self.queue_frequency:
            return None
        return min(view.models, key=lambda m: (m.load.queued, m.load.token_usage)).name

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """With ``accept_frequency``, if our users are not waiting and a model is idle."""
        if view.own_waiting or rng.random() >= self.accept_frequency:
            return None
        return self.run_locally(view)

    def target_stake(self, view: NodeView) -> float:
        """A share of all our credit, larger when idle; nothing if we never accept."""
        if self.accept_frequency <= 0 or not view.models:
            return 0.0
        busy = max(min(1.0, m.load.token_usage / max(m.target_token_usage, 1e-9)
                       + (1.0 if m.load.queued else 0.0)) for m in view.models)
        return self.stake_fraction * (view.balance + view.stake) * (1.0 - busy)


class SpeedAwarePolicy(DefaultPolicy):
    """The authors' rule, with each local model's target divided by the square of
    ``view.speed_ratio``: a node whose peers answer it several times faster than its own
    engine keeps less of its users' work, accepts less and stakes less, as if busier.

    The speeds are the node's own measurements of the answers it got (its engine's and
    each executor's), so a peer cannot talk its way into more work. With equal engines
    the ratio is about 1 and the policy is the default one.
    """

    def __init__(self, params: ServerParams, *, stake_fraction: float = 0.5,
                 exponent: float = 2.0) -> None:
        super().__init__(params, stake_fraction=stake_fraction)
        self.exponent = exponent

    def _scaled(self, view: NodeView) -> NodeView:
        """``view`` with scaled targets, and a ratio of 1 (scaling it again is a no-op)."""
        if view.speed_ratio <= 1.0:
            return view
        f = view.speed_ratio ** self.exponent
        return replace(view, speed_ratio=1.0, models=tuple(
            replace(m, target_token_usage=m.target_token_usage / f) for m in view.models))

    def run_locally(self, view: NodeView) -> str | None:
        """The least loaded model under its (scaled) target, if any."""
        return super().run_locally(self._scaled(view))

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """As the default, against the scaled targets."""
        return super().accept(self._scaled(view), rng)

    def target_stake(self, view: NodeView) -> float:
        """As the default, busier by the scaled targets."""
        return super().target_stake(self._scaled(view))


class PolicyWrapper:
    """A policy that asks ``inner`` for every decision; subclasses change some of them."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def run_locally(self, view: NodeView) -> str | None:
        """As ``inner``."""
        return self.inner.run_locally(view)

    def offload(self, view: NodeView, rng: random.Random) -> bool:
        """As ``inner``."""
        return self.inner.offload(view, rng)

    def queue(self, view: NodeView, rng: random.Random) -> str | None:
        """As ``inner``."""
        return self.inner.queue(view, rng)

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """As ``inner``."""
        return self.inner.accept(view, rng)

    def target_stake(self, view: NodeView) -> float:
        """As ``inner``."""
        return self.inner.target_stake(view)


class FixedStake(PolicyWrapper):
    """``inner``'s decisions with a stake of exactly ``stake`` credits."""

    def __init__(self, inner: Policy, stake: float) -> None:
        super().__init__(inner)
        self.stake = stake

    def target_stake(self, view: NodeView) -> float:
        """Always ``stake``."""
        return self.stake


class ServePeersOnly(PolicyWrapper):
    """A node that runs none of its own users' requests (it offloads or queues them) and
    accepts a peer's request with ``accept_frequency`` while none of its users' wait, on
    the model ``inner`` would run it on."""

    def __init__(self, inner: Policy, accept_frequency: float) -> None:
        super().__init__(inner)
        self.accept_frequency = accept_frequency

    def run_locally(self, view: NodeView) -> str | None:
        """Never."""
        return None

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """With ``accept_frequency``, if our users are not waiting, where ``inner`` would
        run it."""
        if view.own_waiting or rng.random() >= self.accept_frequency:
            return None
        return self.inner.run_locally(view)


class Draining(PolicyWrapper):
    """``inner`` until ``drain()``; then no peer's request is accepted and nothing is
    staked (a node about to leave finishes what it runs)."""

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner)
        self.draining = False

    def drain(self) -> None:
        """Take no new peers' work and unstake from now on."""
        self.draining = True

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """As ``inner`` until draining, then never."""
        return None if self.draining else self.inner.accept(view, rng)

    def target_stake(self, view: NodeView) -> float:
        """As ``inner`` until draining, then nothing."""
        return 0.0 if self.draining else self.inner.target_stake(view)


PolicyFactory = Callable[[ServerParams], Policy]
_REGISTRY: dict[str, PolicyFactory] = {
    "default_sglang": DefaultPolicy,
    "default_vllm": DefaultPolicy,
    "speed_aware": SpeedAwarePolicy,
}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``factory`` available as ``server_params.policy: name``."""
    _REGISTRY[name] = factory


def get_policy(params: ServerParams, registry: Mapping[str, PolicyFactory] = _REGISTRY) -> Policy:
    """Build the policy ``params.policy`` names (a registered name or ``module:Class``)."""
    name = params.policy
    if name in registry:
        return registry[name](params)
    module, sep, attr = name.partition(":")
    if not sep:
        module, _, attr = name.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"server_params.policy: unknown policy {name!r}; use one of "
                          f"{', '.join(sorted(registry))} or 'package.module:Class'")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"server_params.policy: cannot import {name!r}: {exc}") from None
    policy: Policy = factory(params)
    return policy
