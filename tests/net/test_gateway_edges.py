"""The gateway's edges over real HTTP: CORS, one model's record, the endpoints wwwserve
does not implement, and the user's request id reaching the engine."""

from __future__ import annotations

import pytest

from recording_engine import MODEL, node_in_front_of, recording_engine
from wwwserve.config import GatewayParams
from wwwserve.errors import ConfigError

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_the_users_request_id_reaches_the_engine() -> None:
    async with recording_engine() as rec, node_in_front_of(rec) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"x-request-id": "trace-42"})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "trace-42"
        assert rec.headers[-1]["x-request-id"] == "trace-42"


async def test_one_models_record_and_a_404_for_a_model_nobody_serves() -> None:
    async with recording_engine() as rec, node_in_front_of(rec) as client:
        resp = await client.get(f"/v1/models/{MODEL}")
        assert resp.status_code == 200
        assert resp.json()["id"] == MODEL and resp.json()["object"] == "model"
        resp = await client.get("/v1/models/nobody/serves-this")
        assert resp.status_code == 404
        assert "nobody/serves-this" in resp.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/responses"])
async def test_unimplemented_endpoints_are_a_clear_501(path: str) -> None:
    async with recording_engine() as rec, node_in_front_of(rec) as client:
        resp = await client.post(path, json={"model": MODEL, "input": "x"})
        assert resp.status_code == 501
        assert "not implemented" in resp.json()["error"]["message"]
        assert rec.calls == 0


async def test_cors_is_off_by_default() -> None:
    async with recording_engine() as rec, node_in_front_of(rec) as client:
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"origin": "https://app.example.com"})
        assert resp.status_code == 200
        assert "access-control-allow-origin" not in resp.headers
        pre = await client.options("/v1/chat/completions",
                                   headers={"origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in pre.headers


async def test_cors_allows_only_the_configured_origins() -> None:
    async with recording_engine() as rec, \
            node_in_front_of(rec, cors_origins=("https://app.example.com",)) as client:
        pre = await client.options("/v1/chat/completions", headers={
            "origin": "https://app.example.com", "access-control-request-method": "POST"})
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in pre.headers["access-control-allow-methods"]
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"origin": "https://app.example.com"})
        assert resp.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await client.post("/v1/chat/completions", json=CHAT,
                                  headers={"origin": "https://evil.example.net"})
        assert "access-control-allow-origin" not in other.headers
        refused = await client.options("/v1/chat/completions",
                                       headers={"origin": "https://evil.example.net"})
        assert refused.status_code == 403


def test_a_bad_origin_in_the_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cors_origins\[0\]"):
        GatewayParams(cors_origins=("app.example.com/",))
