"""A custom dispatch policy: keep headroom for your own users.

Use it from a node config (with this directory on ``PYTHONPATH``)::

    server_params:
      policy: custom_policy:HeadroomPolicy

It behaves like the default policy, except that it accepts peers' requests only while every
local model is under *half* its target token usage, and it stakes a fixed share of its
credit whenever it accepts at all (more stake: chosen more often by peers).
"""

from __future__ import annotations

import random

from wwwserve.config import ServerParams
from wwwserve.market import DefaultPolicy, NodeView


class HeadroomPolicy(DefaultPolicy):
    """Default decisions, but peers only get the first half of each model's capacity."""

    def __init__(self, params: ServerParams, *, headroom: float = 0.5,
                 stake_share: float = 0.3) -> None:
        super().__init__(params)
        self.headroom = headroom
        self.stake_share = stake_share

    def accept(self, view: NodeView, rng: random.Random) -> str | None:
        """Accept (with ``accept_frequency``) onto a model well under its target."""
        if view.own_waiting or rng.random() >= self.accept_frequency:
            return None
        roomy = [m for m in view.models
                 if m.load.token_usage < self.headroom * m.target_token_usage
                 and m.load.queued == 0]
        return min(roomy, key=lambda m: m.load.token_usage).name if roomy else None

    def target_stake(self, view: NodeView) -> float:
        """A fixed share of all credit while we accept anything, else nothing."""
        if self.accept_frequency <= 0 or not view.models:
            return 0.0
        return self.stake_share * (view.balance + view.stake)


async def compare(burst: int) -> dict[str, int]:
    """A busy node0 and two peers, one on each policy: how many requests each peer takes
    and the highest KV-cache use it reached (in virtual time: instant, same every run).

    node0 serves nothing itself (target 0), so what no peer takes waits in its queue.
    """
    from wwwserve.testing import MemoryTestnet

    async with MemoryTestnet(3, policy=["default_sglang", "default_sglang",
                                        "custom_policy:HeadroomPolicy"],
                             accept_frequency=[0.0, 1.0, 1.0],
                             target_token_usage=[0.0, 0.6, 0.6], stake=[0.0, 50.0, 50.0],
                             profile="rtx4090/qwen3-8b") as net:
        peak = [0.0, 0.0, 0.0]

        async def watch() -> None:
            while True:
                for k, engine in enumerate(net.engines):
                    peak[k] = max(peak[k], engine.load().token_usage)
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with trio.open_nursery() as users:  # node0's users: one request every 0.2 s
                for i in range(burst):
                    users.start_soon(net.nodes[0].complete, net.request(
                        f"r{i}", prompt_tokens=2000, max_tokens=300))
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        return {"default_accepted": net.nodes[1].dispatcher.stats["accepted"],
                "headroom_accepted": net.nodes[2].dispatcher.stats["accepted"],
                "default_peak_kv_pct": round(100 * peak[1]),
                "headroom_peak_kv_pct": round(100 * peak[2])}


if __name__ == "__main__":
    import sys
    from pathlib import Path

    import trio
    from trio.testing import MockClock

    sys.path.insert(0, str(Path(__file__).parent))  # so the config string can import us
    result = trio.run(compare, 60, clock=MockClock(autojump_threshold=0))
    print(f"default policy peer: accepted {result['default_accepted']}, peak KV "
          f"{result['default_peak_kv_pct']}%")
    print(f"HeadroomPolicy peer: accepted {result['headroom_accepted']}, peak KV "
          f"{result['headroom_peak_kv_pct']}%  (it only accepts under half its 60% target)")
