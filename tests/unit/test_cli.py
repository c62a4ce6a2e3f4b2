"""The command line: help, listings and one-line errors with conventional exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from wwwserve.cli import build_parser, main


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "node", "sim-engine", "keygen", "id"} <= set(commands)
    for name, sub in commands.items():
        assert "example:" in (sub.epilog or ""), name


def test_sim_engine_lists_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-engine", "--list"]) == 0
    out = capsys.readouterr().out.split()
    assert "a100-80g/qwen3-8b" in out and "rtx3090/qwen3-8b" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["sim-engine", "--profile", "tpu/none"], "unknown engine profile 'tpu/none'; known:"),
    (["sim-engine", "--backend", "cuda"], "unknown attention backend 'cuda'"),
    (["sim-engine", "--port", "70000"], "--port: must be in [0, 65535]"),
    (["demo", "--nodes", "1"], "--nodes: must be between 2 and 30"),
    (["demo", "--burst", "-1"], "--burst: must be >= 0"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_node_with_a_bad_config_exits_2(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("models:\n  - model_path: m\n    engine: tgi\n")
    assert main(["node", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "models[0].engine: must be one of sglang, vllm, sim" in err
