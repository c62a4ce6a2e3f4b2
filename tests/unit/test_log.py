"""wwwserve.log: trace ids on records, one logging setup that py-libp2p obeys."""

from __future__ import annotations

import logging

import trio

from wwwserve.log import TraceFilter, current_trace, setup_logging, tracing


def test_records_carry_the_trace_of_the_block_they_are_logged_in() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    TraceFilter().filter(record)
    assert record.trace == "-"  # type: ignore[attr-defined]
    with tracing("req-1"):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        TraceFilter().filter(record)
        assert record.trace == "req-1"  # type: ignore[attr-defined]
    assert current_trace() == "-"


async def test_tasks_started_inside_a_trace_keep_it_and_siblings_do_not_share() -> None:
    seen: dict[str, str] = {}

    async def child(name: str) -> None:
        await trio.lowlevel.checkpoint()
        seen[name] = current_trace()

    async def request(rid: str) -> None:
        with tracing(rid):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child, rid)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "a")
        nursery.start_soon(request, "b")
    assert seen == {"a": "a", "b": "b"}


def test_setup_logging_routes_libp2p_through_the_one_handler() -> None:
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging("INFO", libp2p_level="ERROR")
        setup_logging("INFO", libp2p_level="ERROR")  # idempotent: one handler, not two
        ours = [h for h in root.handlers if getattr(h, "_wwwserve", False)]
        assert len(ours) == 1 and root.level == logging.INFO
        lp = logging.getLogger("libp2p")
        assert lp.level == logging.ERROR and lp.propagate and not lp.handlers
    finally:
        for h in root.handlers[:]:
            if getattr(h, "_wwwserve", False):
                root.removeHandler(h)
        root.setLevel(before[1])
