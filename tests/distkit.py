"""Two-rank gloo tests on CPU: a free port, and a launcher that never leaves a hung rank behind."""
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv: list[str], env: dict[str, str], cwd, world: int = 2) -> list[subprocess.Popen]:
    """Start `python argv...` as ranks 0..world-1 (RANK and LOCAL_RANK set, the rest from `env`)."""
    return [subprocess.Popen([sys.executable, *argv], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for r in range(world)]


def wait_ranks(procs: list[subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every rank, kill any still running after `timeout`, assert they all exited 0;
    returns each rank's combined output."""
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # never leave a hung rank behind
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return logs
