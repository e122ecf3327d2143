"""Small helpers for talking to a running `vllm serve` (examples, tests,
benchmarks): wait for /health, read a Prometheus metric."""

from __future__ import annotations

import time
import urllib.request


def wait_ready(url: str, timeout: float, verbose: bool = True) -> None:
    """Wait until `url` (the server root or its /v1 base) answers /health."""
    health = url.rsplit("/v1", 1)[0] + "/health"
    deadline = time.time() + timeout
    if verbose:
        print(f"waiting for {health} ", end="", flush=True)
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(health, timeout=2):
                if verbose:
                    print("ready", flush=True)
                return
        except OSError:
            if verbose:
                print(".", end="", flush=True)
            time.sleep(2)
    raise TimeoutError(f"{health} not ready after {timeout}s")


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric_value(text: str, name: str, labels: dict | None = None) -> float | None:
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric = head.split("{")[0]
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in head for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    return total if found else None
