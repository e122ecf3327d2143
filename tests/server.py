"""Start a real `vllm serve` subprocess on a free local port (tests, benchmarks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from plphp_dev.serving import metric_value, metrics_text  # noqa: F401 (re-exported)

VLLM = str(Path(sys.executable).with_name("vllm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: str, *args: str, plphp: dict | None = None, env: dict | None = None,
                 kv_bytes: int = 192 << 20, timeout: float | None = None, eager: bool | None = None):
        if eager is None:
            from tests.conftest import EAGER as eager
        if timeout is None:
            # a compiled start was 149 s on a quiet 2-core machine and ran past
            # 300 s when another job held a core
            timeout = 300 if eager else 600
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            VLLM, "serve", model, "--port", str(self.port), "--host", "127.0.0.1",
            "--dtype", "float32", "--max-model-len", "4096",
            # eager in the first test pass only: CI time (tests/conftest.py EAGER)
            *(["--enforce-eager"] if eager else []),
            "--kv-cache-memory-bytes", str(kv_bytes), "--served-model-name", "fixture",
            "--limit-mm-per-prompt", json.dumps({"image": 2}), *args,
        ]
        if plphp is not None:
            cmd += ["--attention-backend", "plphp", "--additional-config", json.dumps({"plphp": plphp})]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="vllm-serve-", delete=False)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT,
            env={**_inherited_env(), "VLLM_LOGGING_LEVEL": "INFO", **(env or {})},
            start_new_session=True,
        )
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # about one poll per second
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise TimeoutError(f"vllm serve not ready in {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def metrics(self) -> str:
        return metrics_text(self.url)

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def _inherited_env() -> dict:
    """This process's environment without VLLM_DIST_IDENT: vLLM's CPU worker
    writes it into os.environ of whatever process ran an in-process engine
    earlier in the session, and a server started afterwards would then warn
    about it as an unknown vLLM variable (it is vLLM's, not ours)."""
    return {k: v for k, v in os.environ.items() if k != "VLLM_DIST_IDENT"}

