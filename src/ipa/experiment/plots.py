"""Figures: the IPA paper's comparison grid, the energy study's energy per minute, energy vs PAS."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ipa._io import atomic_write_bytes  # noqa: E402

COLORS = {"ipa": "tab:blue", "ipa-energy": "tab:green", "ipa-carbon": "tab:olive", "fa2-low": "tab:orange", "fa2-high": "tab:red",
          "rim-high": "tab:purple", "oracle": "black"}


def _save(fig, path: str | Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Moving average that ignores gaps (NaN seconds with no completions)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return x
    ok = ~np.isnan(x)
    k = np.ones(max(1, min(window, len(x))))  # "same" mode returns the longer of the two
    num = np.convolve(np.where(ok, x, 0.0), k, mode="same")
    den = np.convolve(ok.astype(float), k, mode="same")
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def _log_axis(axis, set_scale, scale: str, **kw) -> None:
    """A log (or symlog) axis labelled in plain numbers (2, 10, 40), not powers of ten; linear when nothing drawn on
    it is above 0 (a plan that served nothing)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    x = axis is axis.axes.xaxis
    drawn = [np.ma.filled(np.ma.asarray(line.get_xdata() if x else line.get_ydata(), dtype=float), np.nan)
             for line in axis.axes.get_lines()]
    drawn += [np.ma.filled(np.ma.asarray(c.get_offsets(), dtype=float), np.nan)[:, 0 if x else 1]
              for c in axis.axes.collections if len(c.get_offsets())]
    if not any((d > 0).any() for d in drawn):
        return
    set_scale(scale, **kw)
    if scale == "log":
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def comparison_grid(cells: dict[tuple[str, str], dict[str, np.ndarray]], workloads: list[str], policies: list[str],
                    path: Path, window: int = 30) -> Path:
    """Rows: PAS, cost (cores), SLA violations per second; one column per workload, one line per policy."""
    rows = [("pas", "PAS"), ("core_seconds", "cost (cores)"), ("violations", "SLA violations / s")]
    fig, axes = plt.subplots(len(rows), len(workloads), figsize=(4 * len(workloads), 8), squeeze=False, sharex="col")
    for j, w in enumerate(workloads):
        for i, (key, label) in enumerate(rows):
            ax = axes[i][j]
            for p in policies:
                if (w, p) in cells:
                    ax.plot(smooth(cells[(w, p)][key], window), label=p, color=COLORS.get(p), lw=1.2)
            if key == "core_seconds":  # one policy's dozens of cores must not flatten the others' few
                _log_axis(ax.yaxis, ax.set_yscale, "log")
            elif key == "violations" and any(np.nanmax(cells[(w, p)][key], initial=0) > 0
                                             for p in policies if (w, p) in cells):
                _log_axis(ax.yaxis, ax.set_yscale, "symlog", linthresh=0.1)
            if i == 0:
                ax.set_title(w)
            if j == 0:
                ax.set_ylabel(label)
            if i == len(rows) - 1:
                ax.set_xlabel("time (s)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"policies over time ({window} s moving average; cores on a log scale)")
    return _save(fig, path)


def energy_per_minute(cells: dict[tuple[str, str], dict[str, np.ndarray]], workload: str, policies: list[str],
                      path: Path, energy_method: str, key: str = "energy_j", what: str = "energy", unit: str = "J"
                      ) -> Path:
    """The energy study's Figures 4-7: joules per minute, smoothed, one line per policy (or grams of CO2:
    `key` co2_g)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for p in policies:
        if (workload, p) in cells and key in cells[(workload, p)]:
            e = np.nan_to_num(cells[(workload, p)][key])
            minutes = len(e) // 60
            per_min = e[: minutes * 60].reshape(minutes, 60).sum(axis=1) if minutes else e
            ax.plot(np.arange(1, len(per_min) + 1), smooth(per_min, 3), marker="o", ms=3, label=p, color=COLORS.get(p))
    ax.set_xlabel("minute")
    _log_axis(ax.yaxis, ax.set_yscale, "log")  # every policy's line readable beside one that draws ten times as much
    ax.set_ylabel(f"{what} per minute ({unit}, {energy_method}, log scale)")
    ax.set_title(f"{workload}: {what} per minute (3-minute moving average)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def energy_vs_pas(summaries: list[dict], path: Path, energy_method: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    markers = "osD^v<>"
    workloads = sorted({s["workload"] for s in summaries})
    for s in summaries:
        ax.scatter(float(s["energy_j"]) / 1000, float(s["pas"]), color=COLORS.get(s["policy"]),
                   marker=markers[workloads.index(s["workload"]) % len(markers)])
    for p, c in COLORS.items():
        ax.scatter([], [], color=c, label=p)
    for i, w in enumerate(workloads):
        ax.scatter([], [], color="gray", marker=markers[i % len(markers)], label=w)
    _log_axis(ax.xaxis, ax.set_xscale, "log")
    ax.set_xlabel(f"energy (kJ, {energy_method}, log scale)")
    ax.set_ylabel("PAS")
    ax.set_title("energy vs accuracy, every (workload, policy)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_workload(workload, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(workload.rps, lw=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests / s")
    ax.set_title(f"{workload.name}")
    return _save(fig, path)


def frontier_plot(points: list[dict], path: Path, energy_method: str, sweeps: tuple[str, ...] = ("ipa-energy",),
                  x: str = "energy_j") -> Path:
    """PAS vs energy, or grams of CO2 (`x` co2_g), along the energy weight (colour: cost), one line per swept
    policy, with the baselines as labelled points."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    scale, label = (1.0, f"CO2 (g, {energy_method})") if x == "co2_g" else (1000.0, f"energy (kJ, {energy_method})")
    sc = None
    for name in sweeps:
        sweep = [p for p in points if p["policy"] == name]
        xs = [p[x] / scale for p in sweep]
        ys = [p["pas"] for p in sweep]
        ax.plot(xs, ys, color=COLORS.get(name), lw=1, zorder=1, label=name)
        sc = ax.scatter(xs, ys, c=[p["cost_cores"] for p in sweep], cmap="viridis", zorder=2)
        for p in sweep:
            ax.annotate(f"δ={p['delta']:g}", (p[x] / scale, p["pas"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    for p in points:
        if p["policy"] not in sweeps:
            ax.scatter(p[x] / scale, p["pas"], color=COLORS.get(p["policy"]), marker="X", s=60, zorder=3)
            ax.annotate(p["policy"], (p[x] / scale, p["pas"]), fontsize=7, xytext=(4, -8), textcoords="offset points")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="cost (mean cores)")
    ax.set_xlabel(label)
    ax.set_ylabel("PAS")
    ax.legend(fontsize=7)
    ax.set_title(f"{' and '.join(sweeps)} along the energy weight δ")
    return _save(fig, path)
