"""Load from Prometheus text: golden SGLang and vLLM samples, and bad input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wwwserve.engines import EngineLoad
from wwwserve.engines.http import parse_load
from wwwserve.errors import ProtocolError

DATA = Path(__file__).parent.parent / "data" / "metrics"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_sglang_golden_sample() -> None:
    assert parse_load(sample("sglang.prom"), "sglang", "Qwen/Qwen3-8B") == EngineLoad(
        token_usage=0.43, running=37, queued=5, healthy=True)


def test_sglang_data_parallel_ranks_combine() -> None:
    # the busiest replica's KV usage; requests summed over replicas
    assert parse_load(sample("sglang_dp2.prom"), "sglang") == EngineLoad(
        token_usage=0.71, running=24, queued=3, healthy=True)


def test_vllm_golden_sample() -> None:
    assert parse_load(sample("vllm.prom"), "vllm", "Qwen/Qwen3-8B") == EngineLoad(
        token_usage=0.3125, running=21, queued=2, healthy=True)


def test_vllm_deprecated_cache_metric_is_used_when_the_new_one_is_absent() -> None:
    assert parse_load(sample("vllm_legacy.prom"), "vllm") == EngineLoad(
        token_usage=0.0625, running=4, queued=0, healthy=True)


def test_series_of_other_models_are_ignored() -> None:
    text = sample("sglang.prom").replace('"Qwen/Qwen3-8B"', '"other/model"')
    with pytest.raises(ProtocolError, match="lack"):
        parse_load(text, "sglang", "Qwen/Qwen3-8B")


def test_wrong_engine_kind_names_what_is_missing() -> None:
    with pytest.raises(ProtocolError, match="vllm:kv_cache_usage_perc"):
        parse_load(sample("sglang.prom"), "vllm")
    with pytest.raises(ValueError, match="unknown engine kind"):
        parse_load(sample("sglang.prom"), "tgi")


def test_usage_is_clamped_to_0_1() -> None:
    text = sample("vllm.prom").replace("} 0.3125", "} 1.7")
    assert parse_load(text, "vllm").token_usage == 1.0


@given(st.text(max_size=300))
def test_garbage_raises_only_protocol_error(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_load(text, "sglang")
