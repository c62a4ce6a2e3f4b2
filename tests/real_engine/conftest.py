"""The real-engine tier: a real vLLM (CPU build) on loopback serving a tiny random model.

``setup.sh`` makes the vLLM venv and the model in ``WWWSERVE_REAL_ENGINE`` (default
``.real-engine/`` in the clone). Without them these tests skip, saying why; with
``WWWSERVE_REQUIRE_REAL_ENGINE=1`` (CI) they fail instead, as they do when vLLM cannot start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vllm_server import VLLMServer, real_engine_home


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """The running vLLM, shared by the tier (started once: it takes half a minute)."""
    home = real_engine_home()
    python, model = home / "venv" / "bin" / "python", home / "model"
    if not python.exists() or not (model / "config.json").exists():
        why = (f"no vLLM venv and model in {home} (make them with "
               "tests/real_engine/setup.sh)")
        if os.environ.get("WWWSERVE_REQUIRE_REAL_ENGINE") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    server = VLLMServer(python, model, tmp_path_factory.mktemp("vllm") / "vllm.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
