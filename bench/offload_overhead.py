"""Offload overhead: gateway -> libp2p offload -> remote engine, versus calling the engine.

Starts, as separate processes on loopback: a ``wwwserve sim-engine`` (H100 profile), node
``exec`` in front of it (accepts everything) and node ``req`` with no engine of its own (so
every request it gets is offloaded to ``exec``). A small h11 HTTP/1.1 client with
keep-alive (cheaper than the ``openai`` client, so the client does not dominate) measures,
in the same run:

- end-to-end latency and time to first token of streamed ~1 KB answers (256 tokens),
  directly from the engine and through ``req``'s gateway; the difference is what the
  gateway, the dispatcher and the libp2p offload add;
- requests/s one gateway sustains for tiny requests (1 token), with 32 concurrent clients:
  through ``simnode``'s gateway (its engine simulated in-process: gateway + dispatcher
  alone), through ``exec``'s (run locally on the HTTP engine) and through ``req``'s
  (offloaded to ``exec``);
- time from a request's arrival at ``req`` to its dispatch to a peer (from ``/status``).

Targets (issue 3): <= 3 ms added p50 latency, <= 5 ms added TTFT, >= 300 req/s through one
gateway, <= 10 ms p50 arrival-to-dispatch. Ends with one JSON line.

    python bench/offload_overhead.py [--quick]     (about 4 min; --quick about 2)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path

import h11
import trio

from wwwserve.testing import ChildProcess

MODEL = "Qwen/Qwen3-8B"


class Client:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.stream: trio.SocketStream | None = None

    async def post(self, path: str, body: dict[str, object]) -> tuple[float, float, bytes]:
        """POST JSON; return (seconds to the first body byte, total seconds, body)."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        conn = self.conn
        data = json.dumps(body).encode()
        start = trio.current_time()
        await self.stream.send_all(conn.send(h11.Request(
            method="POST", target=path, headers=[
                ("Host", self.host), ("Content-Type", "application/json"),
                ("Content-Length", str(len(data)))])) + conn.send(h11.Data(data=data))
            + conn.send(h11.EndOfMessage()))
        first = None
        parts: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"HTTP {event.status_code}")
            if isinstance(event, h11.Data):
                if first is None and (b'"content"' in event.data or b'"text": "' in event.data):
                    first = first or trio.current_time()
                parts.append(bytes(event.data))
            if isinstance(event, h11.EndOfMessage):
                break
        end = trio.current_time()
        conn.start_next_cycle()
        return (first or end) - start, end - start, b"".join(parts)

    async def get_json(self, path: str) -> object:
        async with await trio.open_tcp_stream(self.host, self.port) as s:
            await s.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             .encode())
            raw = b""
            while chunk := await s.receive_some(65536):
                raw += chunk
        return json.loads(raw.split(b"\r\n\r\n", 1)[1])

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def node_yaml(tmp: Path, name: str, models: str, boot: list[str], accept: float) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        server_params: {{ip: 127.0.0.1, port: 0, offload_frequency: 1.0,
                         queue_frequency: 1.0, accept_frequency: {accept}}}
        ledger_params: {{initial_credit: 1000000.0, initial_staked: 10.0}}
        models: {models}
        node: {{name: {name}, data_dir: {tmp}/data/{name}}}
        network: {{network_id: bench, bootstrap: {json.dumps(boot)}}}
        gateway: {{port: 0}}
        membership: {{heartbeat_interval: 0.5, suspect_timeout: 2.0, peer_timeout: 4.0}}
        """))
    return path


def body(max_tokens: int, stream: bool) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 20}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}


async def latency(url: str, n: int) -> tuple[list[float], list[float]]:
    client = Client(url)
    ttft, e2e = [], []
    for _ in range(n):
        t, total, raw = await client.post("/v1/chat/completions", body(256, True))
        assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
        ttft.append(t)
        e2e.append(total)
    await client.aclose()
    return ttft, e2e


async def throughput(url: str, seconds: float, concurrency: int = 32) -> float:
    done = 0

    async def worker() -> None:
        nonlocal done
        client = Client(url)
        with trio.move_on_after(seconds):
            while True:
                await client.post("/v1/chat/completions", body(1, False))
                done += 1
        await client.aclose()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return done / (trio.current_time() - start)


async def main(quick: bool) -> dict[str, float]:
    n = 10 if quick else 30
    secs = 3.0 if quick else 8.0
    procs: list[ChildProcess] = []
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        async with trio.open_nursery() as nursery:
            try:
                eng = ChildProcess(["sim-engine", "--profile", "h100/qwen3-8b", "--model",
                                    MODEL, "--port", "0", "--json"])
                procs.append(eng)
                engine_url = (await eng.start(nursery))["url"]
                models = json.dumps([{"model_path": MODEL, "base_url": engine_url,
                                      "scrape_interval": 0.2,
                                      "dispatch_params": {"target_token_usage": 0.95}}])
                ex = ChildProcess(["node", "--json-events",
                                   str(node_yaml(tmp, "exec", models, [], 1.0))])
                procs.append(ex)
                ex_info = await ex.start(nursery)
                # a node with its engine simulated in-process: the gateway without the
                # HTTP hop to an engine
                sim_models = json.dumps([{"model_path": MODEL, "engine": "sim",
                                          "sim_profile": "h100/qwen3-8b"}])
                sn = ChildProcess(["node", "--json-events",
                                   str(node_yaml(tmp, "simnode", sim_models, [], 0.0))])
                procs.append(sn)
                sn_info = await sn.start(nursery)
                rq = ChildProcess(["node", "--json-events", str(node_yaml(
                    tmp, "req", "[]", [ex_info["addresses"][0]], 0.0))])
                procs.append(rq)
                rq_info = await rq.start(nursery)
                await rq.wait_for(lambda p: ex_info["peer_id"] in p.events[-1].get("peers", []),
                                  30)
                await trio.sleep(1.5)  # the executor's heartbeat carries its model
                # warm up every path
                await latency(engine_url, 3)
                await latency(rq_info["gateway"], 3)
                d_ttft, d_e2e = await latency(engine_url, n)
                o_ttft, o_e2e = await latency(rq_info["gateway"], n)
                # the same through exec's gateway (its HTTP engine, no offload) and through
                # simnode's (in-process engine): where the added time goes
                l_ttft, _ = await latency(ex_info["gateway"], n)
                s_ttft, _ = await latency(sn_info["gateway"], n)
                # arrival-to-dispatch of these sequential requests (no waiting for capacity)
                status = await Client(rq_info["gateway"]).get_json("/status")
                assert isinstance(status, dict)
                results["arrival_to_dispatch_p50_ms"] = status["offload_dispatch_ms"]["p50"]
                results["arrival_to_dispatch_p99_ms"] = status["offload_dispatch_ms"]["p99"]
                results["direct_e2e_p50_ms"] = 1000 * statistics.median(d_e2e)
                results["offload_e2e_p50_ms"] = 1000 * statistics.median(o_e2e)
                results["added_e2e_p50_ms"] = results["offload_e2e_p50_ms"] \
                    - results["direct_e2e_p50_ms"]
                results["direct_ttft_p50_ms"] = 1000 * statistics.median(d_ttft)
                results["offload_ttft_p50_ms"] = 1000 * statistics.median(o_ttft)
                results["added_ttft_p50_ms"] = results["offload_ttft_p50_ms"] \
                    - results["direct_ttft_p50_ms"]
                results["local_http_engine_added_ttft_p50_ms"] = \
                    1000 * (statistics.median(l_ttft) - statistics.median(d_ttft))
                results["inprocess_engine_added_ttft_p50_ms"] = \
                    1000 * (statistics.median(s_ttft) - statistics.median(d_ttft))
                results["added_e2e_p90_ms"] = 1000 * (pct(o_e2e, 0.9) - pct(d_e2e, 0.9))
                results["engine_direct_rps"] = await throughput(engine_url, secs)
                results["gateway_inprocess_engine_rps"] = await throughput(sn_info["gateway"],
                                                                           secs)
                results["gateway_http_engine_rps"] = await throughput(ex_info["gateway"], secs)
                results["gateway_offload_rps"] = await throughput(rq_info["gateway"], secs)
                status = await Client(rq_info["gateway"]).get_json("/status")
                assert isinstance(status, dict)
                results["offloaded_requests"] = float(status["dispatch"].get("offloaded", 0))
            finally:
                for p in reversed(procs):
                    await p.stop()
                nursery.cancel_scope.cancel()
    return {k: round(v, 3) for k, v in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (CI smoke)")
    args = parser.parse_args()
    res = trio.run(main, args.quick)
    for key, value in res.items():
        print(f"{key:>32}: {value}", file=sys.stderr)
    print(json.dumps(res))
