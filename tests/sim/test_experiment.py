"""Experiments in virtual time: one workload, three strategies, deterministic results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from wwwserve.cli import main
from wwwserve.errors import ConfigError
from wwwserve.sim.experiment import (
    load_scenario,
    make_workload,
    results_json,
    run_strategy,
    summarize,
)

TINY = str(Path(__file__).resolve().parents[1] / "data" / "scenarios" / "tiny.yaml")


@pytest.fixture(scope="module")
def runs():
    scenario = load_scenario(TINY)
    return scenario, {s: run_strategy(scenario, s, seed=3)
                      for s in ("single", "centralized", "oracle", "decentralized")}


def test_every_strategy_serves_the_same_workload_completely(runs):
    scenario, by_strategy = runs
    ids = [a.request_id for a in make_workload(scenario, 3)]
    assert len(ids) > 30
    for records in by_strategy.values():
        assert [r.request_id for r in records] == ids
        assert all(r.outcome == "ok" and r.finish is not None for r in records)
    assert all(r.executor == r.origin for r in by_strategy["single"])


def test_sharing_capacity_beats_serving_alone(runs):
    scenario, by_strategy = runs
    s = {k: summarize(v, scenario.slo_thresholds) for k, v in by_strategy.items()}
    assert s["decentralized"]["offloaded"] > 0 and s["centralized"]["offloaded"] > 0
    assert s["decentralized"]["latency_mean_s"] < 0.8 * s["single"]["latency_mean_s"]
    assert s["decentralized"]["slo_attainment"]["60"] > s["single"]["slo_attainment"]["60"]
    # the oracle (perfect knowledge, least expected completion time) is the bar to aim for
    assert s["oracle"]["latency_mean_s"] <= min(s[k]["latency_mean_s"]
                                                for k in ("single", "centralized"))


def test_the_azure_trace_is_shipped_and_replayed_with_shifts():
    from wwwserve.sim.experiment import azure_conversation_trace

    trace = azure_conversation_trace()
    assert len(trace) == 19366 and trace[0][0] == 0.0 and trace[-1][0] < 3600
    scenario = load_scenario("azure")
    arrivals = make_workload(scenario, 0)
    assert arrivals == make_workload(scenario, 0)
    per_node = [[a for a in arrivals if a.origin == k] for k in range(len(scenario.nodes))]
    assert all(40 < len(n) < 1000 for n in per_node)
    # different windows of the hour: different request sizes at the same moments
    assert per_node[0][0].prompt_tokens != per_node[1][0].prompt_tokens
    assert all(0 <= a.time < scenario.duration for a in arrivals)


def test_results_are_byte_identical_for_a_seed(runs):
    scenario, by_strategy = runs
    again = run_strategy(scenario, "decentralized", seed=3)
    first = results_json(scenario, 3, {"decentralized": by_strategy["decentralized"]})
    assert results_json(scenario, 3, {"decentralized": again}) == first
    other = run_strategy(scenario, "decentralized", seed=4)
    assert results_json(scenario, 4, {"decentralized": other}) != first


def test_a_failed_request_never_meets_an_slo(runs):
    _, by_strategy = runs
    records = [dataclasses.replace(r) for r in by_strategy["single"]]
    records[0].outcome = "DeadlineExceededError"
    s = summarize(records, [1e9])
    assert s["slo_attainment"]["1e+09"] == pytest.approx((len(records) - 1) / len(records))


def test_bad_scenarios_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [{name: a, rate: 1}, {name: b, colour: red}]\n")
    with pytest.raises(ConfigError, match=r"nodes\[1\].colour: unknown key"):
        load_scenario(str(bad))
    with pytest.raises(ConfigError, match="unknown scenario 'nope'; shipped: azure, diverse"):
        load_scenario("nope")


def test_cli_writes_results_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", TINY, "--seed", "1", "--out", str(out), "--quiet",
                 "--strategies", "single,centralized"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["strategies"]) == {"single", "centralized"}
    line = doc["strategies"]["single"]["timelines"]["a"]  # a sample every 5 s
    assert len(line) >= 120 / 5 and all(len(row) == 6 for row in line)
    assert max(row[2] for row in line) > 0  # node a's engine was running requests
    assert "| centralized |" in (out / "summary.md").read_text()
    for png in ("slo_attainment.png", "latency_cdf.png", "latency_over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert "requests per wall second" in capsys.readouterr().out
    assert main(["simulate", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert {"fluctuating", "dynamic", "policy-stake", "paper"} <= set(listed)


def test_dynamic_participation_a_join_helps_and_a_leave_loses_nothing():
    scenario = load_scenario("dynamic")
    records = run_strategy(scenario, "decentralized", seed=0)
    assert records and all(r.outcome == "ok" for r in records)  # nothing lost to leaves

    def mean_latency(lo: float, hi: float) -> float:
        values = [r.latency for r in records if r.latency is not None and lo <= r.submit < hi]
        return sum(values) / len(values)

    # the H100 joins at 200 s: latency falls while it serves
    assert mean_latency(220, 320) < 0.9 * mean_latency(100, 200)
    spec = {n.name: n for n in scenario.nodes}
    for r in records:
        assert spec[r.origin].present(r.submit)  # users come and go with their provider
        if r.executor == "h100":
            assert 200 <= r.submit < 400  # it took work only while it was in


def test_work_taken_from_the_market_follows_stake():
    from wwwserve.sim.experiment import per_node

    scenario = load_scenario("policy-stake")
    rows = per_node(scenario, run_strategy(scenario, "decentralized", seed=0))
    taken = [r["executed_for_others"] for r in rows[1:]]  # stakes 5, 10, 20, 40
    assert taken == sorted(taken) and taken[0] > 0 and taken[-1] > 3 * taken[0]
    assert rows[0]["executed_for_others"] == 0  # accept_frequency 0: never executes for others


def test_a_sweep_changes_one_setting_of_the_chosen_nodes(tmp_path):
    from wwwserve.sim.experiment import Sweep

    scenario = load_scenario("policy-offload")
    assert scenario.sweep is not None and scenario.sweep.param == "offload_frequency"
    one = Sweep(param="accept_frequency", values=(0.3,), nodes=("b",)).apply(scenario, 0.3)
    assert [n.accept_frequency for n in one.nodes] == [0.8, 0.3, 0.8, 0.8]
    assert one.sweep is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [{name: a}, {name: b}]\nsweep: {param: colour, values: [1]}\n")
    with pytest.raises(ConfigError, match=r"sweep\.param: must be one of"):
        load_scenario(str(bad))


def test_timelines_follow_stake_and_load_in_the_network():
    scenario = load_scenario(TINY)
    lines: dict = {}
    run_strategy(scenario, "decentralized", seed=3, timelines=lines)
    assert set(lines) == {"a", "b", "c"}
    # the idle providers stake more than the busy one (the default policy)
    mid = len(lines["a"]) // 2
    assert lines["b"][mid][4] > lines["a"][mid][4]


def test_quality_scenarios_run_on_a_ledger_with_duels_and_conserve_credit(tmp_path, capsys):
    scenario = dataclasses.replace(load_scenario("quality-size"), duration=150.0,
                                   nodes=load_scenario("quality-size").nodes[::2])
    assert scenario.ledger and scenario.strategies == ("decentralized",)
    lines: dict = {}
    records = run_strategy(scenario, "decentralized", seed=1, timelines=lines)
    assert all(r.outcome == "ok" for r in records)
    # every request went to the market: run elsewhere (or queued here when nobody took it)
    assert sum(r.executor != r.origin for r in records) > 0.8 * len(records)
    from wwwserve.sim.experiment import credit_by_group, credit_markdown

    curves = credit_by_group(scenario, lines)
    assert set(curves) == {"Qwen3-8B", "Qwen3-4B", "Qwen3-0.6B"}
    # credit only moves between providers: the network's total stays what genesis gave
    last = min(len(rows) for rows in lines.values()) - 1
    total = sum(rows[last][4] + rows[last][5] for rows in lines.values())
    assert total == pytest.approx(1000.0 * len(scenario.nodes), abs=1e-6)
    # payments and duels moved credit: someone gained what someone lost (every provider
    # both pays and earns, so the net changes are small, 18 to 86 credits over seeds 1-5)
    deltas = [rows[last][4] + rows[last][5] - 1000.0 for rows in lines.values()]
    assert max(deltas) > 0 > min(deltas)
    assert "| Qwen3-8B |" in credit_markdown(scenario, lines)


def test_quality_scenario_settings_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nledger: true\nduel_loser_penalty: 2\n"
                   "nodes: [{name: a}, {name: b}]\n")
    with pytest.raises(ConfigError, match="duel_loser_penalty: must be in"):
        load_scenario(str(bad))
    bad.write_text("name: x\nstrategies: [fastest]\nnodes: [{name: a}, {name: b}]\n")
    with pytest.raises(ConfigError, match="strategies: unknown strategy 'fastest'"):
        load_scenario(str(bad))


def test_the_engines_admission_rule_is_a_scenario_setting(tmp_path):
    from wwwserve.sim.run import _engines

    scenario = load_scenario(TINY)
    assert scenario.admission == "sglang"
    reserve = dataclasses.replace(scenario, admission="reserve")
    assert {e.engine.admission for e in _engines(reserve, 0, {})} == {"reserve"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nadmission: lazy\nnodes: [{name: a}, {name: b}]\n")
    with pytest.raises(ConfigError, match="admission: must be one of sglang, reserve, got 'lazy'"):
        load_scenario(str(bad))


def test_a_provider_policy_is_a_scenario_setting(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: x\nnodes: [{name: a}, {name: b, policy: speed_aware}]\n")
    assert [n.policy for n in load_scenario(str(ok)).nodes] == ["default_sglang", "speed_aware"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: [{name: a}, {name: b, policy: fastest}]\n")
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.policy: unknown policy 'fastest'"):
        load_scenario(str(bad))


def test_without_matplotlib_simulate_writes_results_and_says_plots_were_skipped(
        tmp_path, capsys, monkeypatch):
    """The lean install (no ``wwwserve[sim]``): results and summary still, no plots."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    out = tmp_path / "run"
    assert main(["simulate", TINY, "--seed", "1", "--out", str(out), "--quiet",
                 "--strategies", "single"]) == 0
    assert (out / "results.json").exists() and (out / "summary.md").exists()
    assert not list(out.glob("*.png"))
    assert "plots skipped: matplotlib is not installed (pip install 'wwwserve[sim]')" \
        in capsys.readouterr().out
