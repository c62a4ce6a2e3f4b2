"""The docs keep up with the code: every config key and every CLI command is documented."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from wwwserve.cli import build_parser
from wwwserve.config import ModelConfig, NodeConfig

DOCS = Path(__file__).parent.parent.parent / "docs"


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (\w+).*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        if dataclasses.is_dataclass(default):
            keys += leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def test_every_config_key_is_in_the_reference() -> None:
    doc = sections((DOCS / "config.md").read_text())
    missing = []
    for f in dataclasses.fields(NodeConfig):
        cls = ModelConfig if f.name == "models" else type(f.default_factory())  # type: ignore[misc]
        body = doc.get(f.name, "")
        missing += [f"{f.name}.{k}" for k in leaf_keys(cls) if f"| `{k}` |" not in body]
    assert not missing, f"undocumented config keys: {missing}"


def test_every_command_has_an_example_and_is_in_the_top_level_help() -> None:
    parser = build_parser()
    top = parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, cmd in sub.choices.items():  # type: ignore[union-attr]
        assert f"wwwserve {name}" in top, f"`wwwserve --help` shows no example of {name}"
        assert "example:" in cmd.format_help(), f"`wwwserve {name} --help` has no example"


def test_no_docstring_holds_a_sphinx_role() -> None:
    """The API reference renders docstrings as Markdown: a Sphinx role (``:class:`X```)
    showed there literally. Names are plain code spans."""
    role = re.compile(r":(class|func|meth|mod|attr|data|exc|obj):`")
    src = Path(__file__).parent.parent.parent / "src" / "wwwserve"
    found = [f"{p.relative_to(src)}:{n}" for p in sorted(src.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if role.search(line)]
    assert not found, found
