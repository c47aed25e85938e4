"""Summary figures of one (workload, policy) cell from the runtime's per-second series and decisions."""

from __future__ import annotations

from typing import Any

import numpy as np

from ipa.runtime.sim import SimResult


def has_co2(summaries: list[dict[str, Any]]) -> bool:
    """Whether any cell was run with a carbon series (co2_g is None, or empty in a CSV, without one)."""
    return any(s.get("co2_g") not in (None, "") for s in summaries)


def summarize(result: SimResult, decisions: list[dict[str, Any]], energy_method: str, sla_s: float) -> dict[str, Any]:
    """Goodput: requests answered within the SLA per second of the run; dropped: every request not answered
    (refused at arrival, expired in a queue, lost), of which rejected: refused at arrival."""
    s = result.series
    arrivals = max(result.arrivals, 1)
    seconds = max(result.seconds, 1)
    energy = float(np.nansum(s["energy_j"]))  # a real run's meter may miss a second at its edges
    solve = [d["solve_ms"] for d in decisions if "solve_ms" in d]
    realized = [d for d in decisions if "realized_objective" in d]
    return {
        "pas": float(result.completed_pas.mean()) if len(result.completed_pas) else float("nan"),
        "cost_cores": float(s["core_seconds"].sum() / seconds),
        "energy_j": energy,
        "co2_g": float(np.nansum(s["co2_g"])) if "co2_g" in s else None,  # same method as the energy; None: no series
        "energy_method": energy_method,
        "avg_power_w": energy / max(int(np.isfinite(s["energy_j"]).sum()), 1),
        "energy_per_request_j": energy / max(result.completed, 1),
        "sla_violation_pct": 100 * float(s["violations"].sum()) / arrivals,
        "dropped_pct": 100 * result.dropped / arrivals,
        "rejected_pct": 100 * result.rejected / arrivals,
        "goodput_rps": float(np.sum(result.latencies <= sla_s)) / seconds,
        "p99_latency_s": float(np.percentile(result.latencies, 99)) if len(result.latencies) else float("nan"),
        "decisions": len(decisions),
        "solve_ms_mean": float(np.mean(solve)) if solve else float("nan"),
        "objective": float(np.mean([d["realized_objective"] for d in realized])) if realized else float("nan"),
        "sized_for_true_peak_pct": 100 * float(np.mean([d["realized_feasible"] for d in realized])) if realized else 0.0,
        "reconfigurations": result.reconfigurations,
        "unservable_decisions": sum(bool(d.get("unservable")) for d in decisions),
        "unservable_reason": next((d["reason"] for d in decisions if d.get("unservable")), ""),
        "throughput_rps": result.completed / seconds,
        "arrivals": result.arrivals,
        "completed": result.completed,
        "in_flight": result.in_flight,
    }
