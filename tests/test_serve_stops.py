"""However `ipa serve` stops, nothing it started outlives it: no process, no listening port; two servers run side by
side, and a new one starts on the same port right after a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from ipa.runtime.ray.cluster import free_port
from ipa.runtime.ray.guard import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def listening(pids: set[int]) -> dict[int, str]:
    """TCP ports the processes listen on, with the address each is bound to."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    addr, port = cols[1].rsplit(":", 1)
                    ports[int(port, 16)] = addr
    return ports


LOOPBACK = ("0100007F", "00000000000000000000000001000000")  # 127.0.0.1 and ::1 as /proc/net/tcp writes them


class Server:
    def __init__(self, tmp_path, name: str, port: int | None = None):
        self.port = port or free_port()
        self.out = tmp_path / name
        # a session of its own: the group signals below reach it and what it started, not pytest
        self.proc = subprocess.Popen([sys.executable, "-m", "ipa.cli", "serve", "--port", str(self.port),
                                      "--duration", "600", "--interval", "5", "--predictor", "reactive",
                                      "--out", str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def wait_serving(self) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        self.proc.kill()
        pytest.fail(f"ipa serve on {self.port} never answered: {self.proc.communicate()[0][-3000:]}")

    def stop(self, how: str) -> tuple[set[int], dict[int, str], str]:
        """Stop it as `how` says; what it had started and the ports they listened on, and its output."""
        started = set(descendants(self.proc.pid))
        ports = listening(started | {self.proc.pid})
        {"group TERM": lambda: os.killpg(self.proc.pid, signal.SIGTERM),
         "group INT": lambda: os.killpg(self.proc.pid, signal.SIGINT),
         "KILL": lambda: self.proc.kill()}[how]()
        try:
            output = self.proc.communicate(timeout=120)[0]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return started, ports, output


def assert_nothing_left(started: set[int], ports: dict[int, str], how: str) -> None:
    deadline = time.monotonic() + 30  # the watchdog stops what a SIGKILL left within a few seconds
    while time.monotonic() < deadline and any(alive(p) for p in started):
        time.sleep(0.5)
    left = [p for p in started if alive(p)]
    assert not left, f"{how}: processes left behind: {[open(f'/proc/{p}/comm').read().strip() for p in left]}"
    still = listening({int(p) for p in os.listdir("/proc") if p.isdigit()})
    assert not set(ports) & set(still), f"{how}: ports still bound: {sorted(set(ports) & set(still))}"


def test_two_servers_run_side_by_side_and_every_way_of_stopping_leaves_nothing(tmp_path):
    a, b = Server(tmp_path, "a"), Server(tmp_path, "b")
    try:
        a.wait_serving()
        b.wait_serving()  # HAProxy's stats, metrics and fallback ports are each cluster's own
        for server in (a, b):
            ports = listening(set(descendants(server.proc.pid)))
            assert server.port in ports and len(ports) >= 3, ports  # the front, HAProxy's stats and metrics
            exposed = {p for p, addr in ports.items() if addr not in LOOPBACK}
            haproxy = listening({p for p in descendants(server.proc.pid)
                                 if open(f"/proc/{p}/comm").read().strip() == "haproxy"})
            assert haproxy and not exposed & set(haproxy), f"HAProxy listens beyond 127.0.0.1: {haproxy}"
        started, ports, output = a.stop("group TERM")  # as timeout, kill -- -PGID and supervisors stop a service
        assert "logs in" in output and (a.out / "decisions.csv").is_file(), output[-3000:]
        assert_nothing_left(started, ports, "SIGTERM to the group")
        assert requests.get(f"http://127.0.0.1:{b.port}/", timeout=10).status_code == 200  # b never noticed
        assert_nothing_left(*b.stop("KILL")[:2], "SIGKILL")

        again = Server(tmp_path, "again", port=a.port)  # right after a stop, on the same port
        again.wait_serving()
        started, ports, output = again.stop("group INT")  # Ctrl-C in a terminal
        assert "logs in" in output, output[-3000:]
        assert_nothing_left(started, ports, "SIGINT to the group")
    finally:
        for server in (a, b, *([again] if "again" in locals() else [])):
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)
