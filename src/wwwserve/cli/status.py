"""``wwwserve status``: a running node's state from its gateway."""

from __future__ import annotations

import argparse
from typing import Any

import trio

from ..config import load_config
from ..errors import ConfigError, WWWServeError
from ._common import print_json

# ---- status -----------------------------------------------------------------------------


def gateway_url(target: str) -> str:
    if target.startswith(("http://", "https://")):
        return target.rstrip("/").removesuffix("/v1")
    cfg = load_config(target)
    host = cfg.gateway.host if cfg.gateway.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if not cfg.gateway.enabled or cfg.gateway.port == 0:
        raise ConfigError(f"{target}: gateway: this node has no fixed gateway port; pass the "
                          "gateway URL instead")
    return f"http://{host}:{cfg.gateway.port}"


async def fetch_json(url: str, path: str, api_key: str | None) -> dict[str, Any]:
    """GET ``url + path`` from a node's gateway; one-line errors if it does not answer."""
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=api_key or "none",
                                max_retries=0, timeout=10.0)
    try:
        got = await client.get(url + path, cast_to=object)
    except openai.APIConnectionError:
        raise WWWServeError(f"no node answers at {url} (is it running?)") from None
    except openai.APIStatusError as exc:
        raise WWWServeError(f"{url}{path} answered HTTP {exc.status_code}: "
                            f"{exc.message}") from None
    finally:
        await client.close()
    if not isinstance(got, dict):
        raise WWWServeError(f"{url}{path} did not answer a JSON object")
    return got


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    url = gateway_url(args.target)
    status = trio.run(fetch_json, url, "/status", args.api_key)
    if args.json:
        print_json(status)
        return 0
    console = Console()
    console.print(f"[bold]{status.get('name')}[/] {status.get('peer_id')}  credit "
                  f"{status.get('credit', 0):.1f}  stake {status.get('stake', 0):.1f}")
    models = Table(title="models")
    for col in ("model", "healthy", "kv", "running", "queued"):
        models.add_column(col)
    for m in status.get("models", []):
        models.add_row(m["model"], "yes" if m["healthy"] else "NO", f"{m['token_usage']:.0%}",
                       str(m["running"]), str(m["queued"]))
    console.print(models)
    peers = Table(title="peers")
    for col in ("peer id", "status", "stake", "credit", "models"):
        peers.add_column(col)
    for p in status.get("peers", []):
        pid = str(p["peer_id"])
        peers.add_row(f"{pid[:12]}…{pid[-6:]}", p["status"], f"{p['stake']:.1f}",
                      f"{p['credit']:.1f}", ", ".join(p["models"]))
    console.print(peers)
    dispatch = status.get("dispatch", {})
    console.print("dispatch: " + (", ".join(f"{k} {v}" for k, v in sorted(
        dispatch.items())) if isinstance(dispatch, dict) and dispatch else "nothing yet"))
    duels = status.get("duels", {})
    console.print("duels: " + (", ".join(f"{k} {v}" for k, v in sorted(
        duels.items())) if isinstance(duels, dict) and duels else "none yet"))
    ratings = status.get("ratings", {})
    if isinstance(ratings, dict) and ratings:
        table = Table(title="ratings (Bradley-Terry, Elo scale, from settled duels)")
        for col in ("peer id", "rating", "won", "lost", "tie"):
            table.add_column(col)
        for pid, r in sorted(ratings.items(), key=lambda kv: -kv[1]["rating"]):
            table.add_row(f"{pid[:12]}…{pid[-6:]}", f"{r['rating']:.0f}", str(r["wins"]),
                          str(r["losses"]), str(r["ties"]))
        console.print(table)
    return 0
