"""What every ingress replica saw, in one place: arrivals, batch times, decoding CPU, requests at each stage, metrics.

One ingress replica is one Python event loop: it saturates one core, so a pipeline whose models take more than
about 1 / (serving's CPU per request) is held at the ingress unless the ingress gets replicas of its own. Each
replica then sees a share of the requests (HAProxy sends a new connection to the one with the fewest), and what
the runtime reads (the arrivals the predictor learns from, the batches calibration learns from) and what
`/metrics` and `GET /` answer must be the whole pipeline's. So each ingress replica pushes what it saw since its
last push to this actor every `PUSH_S` (one small call, off the request path) and gets back what the runtime last
reported (config, energy) for its gauges; the runtime reads the merged view from here. One ingress is the case of
one: the same path.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from typing import Any

import ray

NAME, NAMESPACE = "ipa-ledger", "ipa"
PUSH_S = 0.25  # how often an ingress replica pushes (the runtime's view lags by about this much)
GONE_S = 5.0  # a replica that has not pushed for this long is counted out of in-flight and the replica count
TIMINGS_KEPT = 20_000  # batch times kept when nobody collects them (the newest half stays)


class Tally:
    """The ledger's state and merging (the actor below runs it; tests use it as it is)."""

    def __init__(self) -> None:
        self.arrivals: Counter[int] = Counter()  # epoch second -> requests that arrived, over every replica
        self.timings: list[dict[str, Any]] = []  # batch times, oldest first
        self.dropped = 0  # how many older ones were trimmed (cursor offset)
        self.seen: dict[str, None] = {}  # batch ids already kept: a batch may hold requests of several replicas
        self.decode_cpu_s = 0.0
        self.replicas: dict[str, dict[str, Any]] = {}  # id -> at (per stage), pushed (wall time), metrics
        self.observed: dict[str, Any] = {}  # the runtime's latest config and energy, for every replica's gauges
        self.version = 0  # of `observed`: a replica updates its gauges when it changes
        self.routes: dict[str, dict[str, str]] = {}  # stage replica id -> its direct socket (`ipa.runtime.ray.direct`)

    def push(self, replica: str, arrivals: dict[int, int], timings: list[dict[str, Any]], decode_cpu_s: float,
             at: list[int], metrics: list | None, pushed: float) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """One replica's news since its last push; answers what the runtime last reported, its version, and the
        stage replicas' direct routes."""
        self.arrivals.update(arrivals)
        for t in timings:
            if t["id"] in self.seen:
                continue
            self.seen[t["id"]] = None
            if len(self.seen) > 8192:
                del self.seen[next(iter(self.seen))]
            self.timings.append(t)
        if len(self.timings) > TIMINGS_KEPT:
            self.dropped += len(self.timings) - TIMINGS_KEPT // 2
            del self.timings[:-TIMINGS_KEPT // 2]
        self.decode_cpu_s += decode_cpu_s
        entry = self.replicas.setdefault(replica, {"metrics": []})
        entry |= {"at": list(at), "pushed": pushed}
        if metrics is not None:
            entry["metrics"] = metrics
        return self.version, self.observed, self.routes

    def route(self, replica: str, entry: dict[str, str] | None) -> None:
        """A stage replica's direct socket (stage, node, path), or None when it stops."""
        if entry is None:
            self.routes.pop(replica, None)
        else:
            self.routes[replica] = entry

    def observe(self, **kw: Any) -> None:
        self.observed |= kw
        self.version += 1

    def timings_since(self, cursor: int) -> tuple[list[dict[str, Any]], int]:
        """Batch times after `cursor` (a count of all batches kept), and the new cursor."""
        start = max(0, cursor - self.dropped)
        return self.timings[start:], self.dropped + len(self.timings)

    def arrivals_since(self, epoch_s: int) -> tuple[dict[int, int], float]:
        """Arrivals per second from `epoch_s`, and the wall time up to which every live replica has pushed (the
        seconds before it are complete)."""
        live = self._live()
        through = min((r["pushed"] for r in live.values()), default=time.time())
        return {s: n for s, n in self.arrivals.items() if s >= epoch_s}, through

    def totals(self) -> dict[str, Any]:
        """The pipeline's state over every replica: how many push, requests at each stage, decoding CPU."""
        live = self._live()
        width = max((len(r["at"]) for r in live.values()), default=0)
        at = [sum(r["at"][i] for r in live.values() if i < len(r["at"])) for i in range(width)]
        return {"ingress_replicas": len(live), "at_stage": at, "decode_cpu_s": self.decode_cpu_s}

    def metric_families(self) -> list:
        """Every replica's metric families merged: counters and histograms add up (a replica that stopped keeps its
        counts, so no counter goes back), the in-flight gauge adds up over the live ones, the runtime's gauges
        (config, energy) are the same everywhere and are taken once."""
        live = self._live()
        merged: dict[str, Any] = {}
        values: dict[str, dict[tuple, list]] = {}  # family -> sample key -> [a sample, its merged value]
        for rid, r in self.replicas.items():
            for fam in r["metrics"]:
                summed = fam.type in ("counter", "histogram") or fam.name == "ipa_in_flight_requests"
                if fam.name == "ipa_in_flight_requests" and rid not in live:
                    continue
                if fam.name not in merged:
                    merged[fam.name], values[fam.name] = copy.copy(fam), {}
                for s in fam.samples:
                    if s.name.endswith("_created"):  # when a replica's counter started: not a sum
                        continue
                    key = (s.name, tuple(sorted(s.labels.items())))
                    have = values[fam.name].setdefault(key, [s, 0.0])
                    have[1] = have[1] + s.value if summed else s.value
        for name, fam in merged.items():
            fam.samples = [s._replace(value=v) for s, v in values[name].values()]
        return list(merged.values())

    def _live(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {k: r for k, r in self.replicas.items() if now - r.get("pushed", 0.0) < GONE_S}


Ledger = ray.remote(num_cpus=0)(Tally)


def ledger(create: bool = False):
    """The cluster's ledger (created by the runtime before it deploys; an ingress only looks it up), or None. It
    lives as long as the cluster (a local one stops with the run; `shutdown` kills it on a joined one)."""
    try:
        if create:
            # detached: a named actor otherwise dies with its creator's last handle (the runtime of an earlier cell)
            return Ledger.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:  # not created (an app deployed without the runtime): the ingress keeps its own view
        return None
