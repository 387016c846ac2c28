"""Run `imagelm` as several gloo processes on this CPU, the way torchrun would start them."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world_size: int, env: dict | None = None, timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start `python -m imagelm.cli *argv` as ranks 0..world_size-1 of one job (torchrun's environment:
    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; one thread each) and wait for all of them."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        rank_env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(rank), "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                    **(env or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", "imagelm.cli", *argv], env=rank_env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return done
