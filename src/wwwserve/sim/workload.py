"""Workloads: a scenario's requests, drawn for a seed or replayed from a public trace."""

from __future__ import annotations

import datetime
import functools
import gzip
import math
import random
from importlib import resources

from ..engines import CompletionRequest
from .scenario import Arrival, Scenario


# ---- workload -----------------------------------------------------------------------------
def make_workload(scenario: Scenario, seed: int) -> list[Arrival]:
    """Poisson arrivals per node (rates swap at ``switch_at``), deterministic for ``seed``.

    Output lengths are log-normal with the scenario's mean (sigma 0.6), capped at its max;
    prompt lengths vary +-50% around the scenario's mean.
    """
    if scenario.workload == "azure-conv":
        return _trace_workload(scenario, seed)
    arrivals: list[Arrival] = []
    sigma = 0.6
    mu = math.log(max(1, scenario.output_tokens_mean)) - sigma * sigma / 2
    for k, node in enumerate(scenario.nodes):
        rng = random.Random(f"{seed}:arrivals:{node.name}")
        t = node.join_at
        end = min(scenario.duration, node.leave_at or scenario.duration)
        i = 0
        while True:
            switched = scenario.switch_at is not None and t >= scenario.switch_at
            rate = node.rate_after_switch if switched and node.rate_after_switch is not None \
                else node.rate
            if rate <= 0:
                if scenario.switch_at is not None and not switched:
                    t = scenario.switch_at
                    continue
                break
            t += rng.expovariate(rate)
            if t >= end:
                break
            out = max(1, min(scenario.output_tokens_max, round(rng.lognormvariate(mu, sigma))))
            prompt = max(1, round(scenario.prompt_tokens * rng.uniform(0.5, 1.5)))
            arrivals.append(Arrival(f"{node.name}-{i}", k, t, prompt, out))
            i += 1
    arrivals.sort(key=lambda a: (a.time, a.request_id))
    return arrivals


TRACE_HOUR = 3600.0


@functools.cache
def azure_conversation_trace() -> tuple[tuple[float, int, int], ...]:
    """The Azure LLM inference trace 2023, conversation service (one hour, 19,366 requests):
    (seconds from its start, context tokens, generated tokens). CC-BY 4.0, Microsoft; see
    ``wwwserve/sim/data/README.md``."""
    raw = resources.files("wwwserve.sim").joinpath(
        "data/azure_llm_inference_2023_conv.csv.gz").read_bytes()
    rows = []
    start = None
    for line in gzip.decompress(raw).decode().splitlines()[1:]:
        stamp, ctx, gen = line.split(",")
        t = datetime.datetime.fromisoformat(stamp[:26]).timestamp()
        start = t if start is None else start
        rows.append((t - start, int(ctx), int(gen)))
    return tuple(rows)


def _trace_workload(scenario: Scenario, seed: int) -> list[Arrival]:
    """Each node replays the trace hour from its ``trace_shift`` (wrapping around), keeping
    a ``trace_scale`` share of the requests, so the nodes' peaks differ."""
    trace = azure_conversation_trace()
    arrivals = []
    for k, node in enumerate(scenario.nodes):
        rng = random.Random(f"{seed}:trace:{node.name}")
        picked = []
        for t, ctx, gen in trace:
            at = (t - node.trace_shift) % TRACE_HOUR
            if at < scenario.duration and node.present(at) and rng.random() < node.trace_scale:
                picked.append((at, ctx, gen))
        picked.sort()
        for i, (at, ctx, gen) in enumerate(picked):
            arrivals.append(Arrival(f"{node.name}-{i}", k, at, max(1, ctx),
                                    max(1, min(gen, scenario.output_tokens_max))))
    arrivals.sort(key=lambda a: (a.time, a.request_id))
    return arrivals


def _request(scenario: Scenario, a: Arrival) -> CompletionRequest:
    return CompletionRequest(request_id=a.request_id, model=scenario.model,
                             prompt="x" * (4 * a.prompt_tokens), max_tokens=a.output_tokens,
                             ignore_eos=True, stream=True, timeout=scenario.duration
                             + scenario.drain)
