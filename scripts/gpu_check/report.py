"""Logging, phases and the closing summary of the GPU check (run.py)."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
SUMMARY: list[str] = []


def log(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Phase:
    """Prints start / ok / FAILED with the phase's time. A failure ends the run
    (fatal) or is re-raised for run_mode, which ends that mode and goes on."""

    def __init__(self, name: str, fatal: bool = False):
        self.name, self.fatal = name, fatal

    def __enter__(self):
        self.t = time.perf_counter()
        log(f"== {self.name}: start")
        return self

    def __exit__(self, kind, err, tb):
        dt = time.perf_counter() - self.t
        if err is None:
            log(f"== {self.name}: ok in {dt:.1f} s")
            SUMMARY.append(f"{self.name}: ok ({dt:.0f} s)")
            return False
        traceback.print_exception(kind, err, tb)
        log(f"== {self.name}: FAILED after {dt:.1f} s")
        SUMMARY.append(f"{self.name}: FAILED after {dt:.0f} s: {kind.__name__}: {str(err)[:400]}")
        if self.fatal:
            finish(1)
        return False


def finish(code: int) -> None:
    print("\n===== GPU CHECK SUMMARY =====", flush=True)
    for line in SUMMARY:
        print(line, flush=True)
    print(f"total {time.perf_counter() - T0:.0f} s, exit {code}", flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check_summary.txt").write_text("\n".join(SUMMARY) + "\n")
    os._exit(code)  # engine processes must not keep the call alive
