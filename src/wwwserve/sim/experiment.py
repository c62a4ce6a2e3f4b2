"""Experiments: one workload served three ways, in trio's virtual time.

A ``Scenario`` (a YAML file: nodes with GPU profiles and policies, a workload, SLO
thresholds) is turned into a deterministic list of requests (``make_workload()``), then
served, on identical copies of the simulated engines, by

- ``single``: every node serves only its own users;
- ``centralized``: one global scheduler with fresh, instant metrics, using the WWW.Serve
  authors' rule (keep a request on its own node if that node's ``token_usage`` < 0.6, else
  send it to the node with the lowest ``token_usage``, ties by running + queued);
- ``oracle``: a stronger global scheduler with perfect, instant knowledge: each request goes
  to the engine where it would finish first (``SimEngine.estimate_completion()``);
- ``decentralized``: the real ``Node`` code (membership gossip, PoS
  offloading, policies, credits) over ``MemoryNetwork``.

Each run yields one ``Record`` per request; ``summarize()`` computes SLO attainment
(the share of *all* requests finished within each threshold; a failed request never meets
an SLO), latency percentiles and time to first token.

The parts: ``scenario`` (the YAML model), ``workload`` (requests), ``run``
(the four ways), ``report`` (figures, tables, plots); this module gathers them.
"""

from .report import (
    credit_by_group,
    credit_markdown,
    per_node,
    per_node_markdown,
    results_json,
    summarize,
    summary_markdown,
    write_credit_plot,
    write_per_node_plot,
    write_plots,
    write_sweep_plot,
    write_timeline_plot,
)
from .run import TIMELINE_INTERVAL, Timelines, run_strategy
from .scenario import (
    CENTRAL_THRESHOLD,
    STRATEGIES,
    SWEEPABLE,
    Arrival,
    NodeSpec,
    Record,
    Scenario,
    Sweep,
    list_scenarios,
    load_scenario,
)
from .workload import TRACE_HOUR, azure_conversation_trace, make_workload

__all__ = [
    "CENTRAL_THRESHOLD", "STRATEGIES", "SWEEPABLE", "TIMELINE_INTERVAL", "TRACE_HOUR",
    "Arrival", "NodeSpec", "Record", "Scenario", "Sweep", "Timelines",
    "azure_conversation_trace", "credit_by_group", "credit_markdown", "list_scenarios",
    "load_scenario", "make_workload", "per_node", "per_node_markdown", "results_json",
    "run_strategy", "summarize", "summary_markdown", "write_credit_plot",
    "write_per_node_plot", "write_plots", "write_sweep_plot", "write_timeline_plot",
]
