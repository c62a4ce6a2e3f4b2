"""The code's shape: inputs, not patch points; files that keep to one job."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("src", "tests", "examples", "bench") for p in (ROOT / d).rglob("*.py")]

#: attribute assignments into a running node's parts (a policy, the dispatcher, ...)
PATCHES = re.compile(
    r"\.(dispatcher|policy|membership|duels|ledger|requester|executor)\.[\w.]+\s*=(?!=)"
    r"|\bchain\.propose\s*=(?!=)"
    r"|monkeypatch\.setattr\([^)]*\b(node|dispatcher|policy|Node|Dispatcher)\b")
#: methods replaced on objects: allowed only where a third-party library is fixed, or a
#: test's own log handler collects records
METHOD_ASSIGN = "type: ignore[method-assign]"
ALLOWED_METHOD_ASSIGN = {"src/wwwserve/http/server.py", "src/wwwserve/overlay/_libp2p_fixes.py",
                         "tests/log_capture.py"}


def test_no_node_part_is_patched_after_it_is_built() -> None:
    """Policies, dispatcher settings and node parts are inputs (Node(config, policy=...),
    the config's ``dispatch`` section, MemoryTestnet's wrappers), never patched in."""
    found = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "tests/unit/test_architecture.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PATCHES.search(line) or (METHOD_ASSIGN in line
                                        and rel not in ALLOWED_METHOD_ASSIGN):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "patched into a node:\n" + "\n".join(found)


def test_the_patterns_catch_what_they_are_for() -> None:
    for line in ("net.nodes[0].dispatcher.reward = 0.0",
                 "node.dispatcher.policy.target_stake = lambda view: 1.0",
                 "liar.membership.local_state = boast",
                 "colluder.duels.evaluate = vote",
                 "chain.propose = two_faced",
                 "monkeypatch.setattr(node.dispatcher, 'stall_timeout', 1.0)"):
        assert PATCHES.search(line), line
    for line in ("assert node.dispatcher.stats == {}", "self.policy = policy",
                 "x = node.dispatcher.params.stall_timeout"):
        assert not PATCHES.search(line), line


def test_no_source_file_is_long_unless_it_says_it_is_one_job() -> None:
    long = []
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 600 and "One job:" not in text.split('"""')[1]:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
    assert not long, "over 600 lines without saying which one job they hold:\n" + \
        "\n".join(long)
