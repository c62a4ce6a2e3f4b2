"""The one assembler of simulated nodes: a node's config and its Node on a MemoryNetwork.

``MemoryTestnet``, the experiments (``wwwserve.sim.run``) and the duel studies
(``wwwserve.sim.duels``) all build their nodes here, so a simulated node differs from
another only by what its caller chose (its engine, policy, credit, clock and RNG), never by
how it was put together.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path

from ..clock import WallClock, trio_wall_clock
from ..config import (
    DEFAULT_DISPATCH,
    DispatchParams,
    DuelParams,
    GatewayParams,
    MembershipParams,
    ModelConfig,
    ModelDispatchParams,
    NetworkParams,
    NodeConfig,
    NodeParams,
    ServerParams,
)
from ..engines import Engine
from ..identity import Identity
from ..ledger import Genesis
from ..market import CreditAccount, Policy, get_policy
from ..membership import LocalState
from ..node import Node
from ..overlay import MemoryNetwork

__all__ = ["sim_config", "sim_node"]


def sim_config(name: str, model: str | None, *, membership: MembershipParams,
               network_id: str = "sim", bootstrap: tuple[str, ...] = (),
               server_params: ServerParams | None = None,
               target_token_usage: float | None = None, duel: DuelParams | None = None,
               dispatch: DispatchParams = DEFAULT_DISPATCH,
               data_dir: Path | None = None) -> NodeConfig:
    """The config of a simulated node ``name`` serving ``model`` on a simulated engine
    (None: a node with no engine of its own), with no gateway."""
    models: tuple[ModelConfig, ...] = ()
    if model is not None:
        models = (ModelConfig(model_path=model, engine="sim") if target_token_usage is None
                  else ModelConfig(model_path=model, engine="sim",
                                   dispatch_params=ModelDispatchParams(
                                       target_token_usage=target_token_usage)),)
    return NodeConfig(
        server_params=server_params or ServerParams(), models=models,
        network=NetworkParams(network_id=network_id, bootstrap=bootstrap),
        membership=membership, gateway=GatewayParams(enabled=False),
        node=NodeParams(name=name) if data_dir is None
        else NodeParams(name=name, data_dir=data_dir),
        duel=duel or DuelParams(), dispatch=dispatch)


def sim_node(config: NodeConfig, *, identity: Identity, network: MemoryNetwork,
             rng: random.Random, engines: Mapping[str, Engine],
             policy: Policy | None = None, credit: CreditAccount | None = None,
             genesis: Genesis | None = None, clock: WallClock | None = None,
             local_state: Callable[[], LocalState] | None = None) -> Node:
    """A node of ``config`` on ``network`` (not started): its policy the config's unless
    given, its wall clock trio's (virtual) clock unless given."""
    return Node(config, identity=identity, overlay=network.node(identity),
                policy=policy if policy is not None else get_policy(config.server_params),
                engines=engines, credit=credit, genesis=genesis,
                clock=clock if clock is not None else trio_wall_clock(),
                local_state=local_state, rng=rng)
