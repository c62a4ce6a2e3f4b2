"""A real vLLM (CPU build) on loopback serving a tiny random model, as a process the
real-engine tier starts, stops and restarts; ``real_engine_home`` is where
``tests/real_engine/setup.sh`` made its venv and model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVED = "tiny-llama"
#: vLLM's start (weights, KV pool, HTTP server) took 16-47 s on a 2-core machine
START_WITHIN = 300.0


def real_engine_home() -> Path:
    """Where setup.sh put the vLLM venv and the model."""
    return Path(os.environ.get("WWWSERVE_REAL_ENGINE") or ROOT / ".real-engine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class VLLMServer:
    """A vLLM process on ``127.0.0.1:port``; :meth:`stop` and :meth:`start` restart it on
    the same port."""

    python: Path
    model: Path
    log: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
                   HF_HUB_OFFLINE="1",
                   # the model's threads on one core: on two, vLLM's own front end (which
                   # answers /metrics) and the tests' processes were starved under a burst
                   VLLM_CPU_OMP_THREADS_BIND="0",
                   TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   # without it vLLM's internal queue binds the machine's non-loopback address
                   VLLM_HOST_IP="127.0.0.1")
        # a 2,048-token KV pool (64 blocks of 32), so that load signals move under a burst
        argv = [str(self.python), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(self.model), "--served-model-name", SERVED,
                "--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", "1024",
                "--dtype", "bfloat16", "--enforce-eager", "--block-size", "32",
                "--num-gpu-blocks-override", "64"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + START_WITHIN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"vLLM exited with {self.proc.returncode} while starting")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)  # an outside process: polled under a deadline
        self._fail(f"vLLM did not answer /health within {START_WITHIN:g} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # vLLM's engine core is a child process
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def _fail(self, why: str) -> None:
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"{why}; the end of its log ({self.log}):\n{tail}", pytrace=False)
