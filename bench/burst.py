"""Burst benchmark: 30 simultaneous requests at one node of a 4-node process testnet.

Node 0 runs an RTX 3090 sim-engine and accepts no peers' work; nodes 1-3 run idle H100
sim-engines. Every node reads its engine's load over HTTP every 0.5 s, as it reads a real
engine's ``/metrics``. The same burst runs twice in one run, on the authors' rule (decide
on the last reading alone: ``count_admitted: false``) and on wwwserve's (the reading plus
what was admitted since it), and prints for each the share offloaded, p50/p90 latency and
time to first token, then the ratios, ending with one JSON line.

Target (real-engines issue): with counting, at least 60% of the burst is offloaded and
p90 latency is at least 2x lower than on the reading alone.

    python bench/burst.py [--requests 30] [--max-tokens 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from wwwserve.testing.processes import ProcessTestnet

MODEL = "Qwen/Qwen3-8B"


async def one(client: httpx.AsyncClient, gateway: str, i: int, max_tokens: int,
              out: list[tuple[float, float]]) -> None:
    body = {"model": MODEL, "prompt": f"request {i} " + "lorem ipsum " * 300,
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    start = time.monotonic()
    first = None
    async with client.stream("POST", gateway + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - start
    out.append((time.monotonic() - start, first if first is not None else float("nan")))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def burst(count_admitted: bool, requests: int, max_tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with ProcessTestnet(
                4, root=Path(tmp), ledger=False,
                profiles=["rtx3090/qwen3-8b"] + ["h100/qwen3-8b"] * 3,
                accept_frequency=[0.0, 1.0, 1.0, 1.0], target_token_usage=0.6,
                queue_frequency=1.0, count_admitted=count_admitted) as net:
            await trio.sleep(2.0)  # every node has read its idle engine
            gateway = net.nodes[0].gateway
            done: list[tuple[float, float]] = []
            async with httpx.AsyncClient(timeout=300) as client, \
                    trio.open_nursery() as nursery:
                for i in range(requests):
                    nursery.start_soon(one, client, gateway, i, max_tokens, done)
            stats = (await net.status(0))["dispatch"]
    latency = [d[0] for d in done]
    ttft = [d[1] for d in done]
    offloaded = stats.get("offloaded", 0)
    return {"offloaded_share": offloaded / requests, "local": stats.get("local", 0),
            "latency_p50_s": pct(latency, 0.5), "latency_p90_s": pct(latency, 0.9),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p90_s": pct(ttft, 0.9),
            "latency_mean_s": statistics.fmean(latency)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    old = trio.run(burst, False, args.requests, args.max_tokens)
    new = trio.run(burst, True, args.requests, args.max_tokens)
    for name, rep in (("reading alone (authors)", old), ("reading + admitted", new)):
        print(f"{name:24s} offloaded {rep['offloaded_share']:.0%}  latency p50 "
              f"{rep['latency_p50_s']:.2f} s p90 {rep['latency_p90_s']:.2f} s  TTFT p50 "
              f"{rep['ttft_p50_s']:.2f} s p90 {rep['ttft_p90_s']:.2f} s")
    ratios = {"p90_latency_ratio": old["latency_p90_s"] / new["latency_p90_s"],
              "p50_latency_ratio": old["latency_p50_s"] / new["latency_p50_s"],
              "p90_ttft_ratio": old["ttft_p90_s"] / new["ttft_p90_s"]}
    print(f"old / new: p90 latency {ratios['p90_latency_ratio']:.2f}x, p50 latency "
          f"{ratios['p50_latency_ratio']:.2f}x, p90 TTFT {ratios['p90_ttft_ratio']:.2f}x")
    print(json.dumps({"requests": args.requests,
                      "old_offloaded_share": round(old["offloaded_share"], 3),
                      "new_offloaded_share": round(new["offloaded_share"], 3),
                      **{f"old_{k}": round(v, 3) for k, v in old.items()
                         if k.endswith("_s")},
                      **{f"new_{k}": round(v, 3) for k, v in new.items()
                         if k.endswith("_s")},
                      **{k: round(v, 2) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
