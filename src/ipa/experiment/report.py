"""The report: plots from the cells' files and one HTML page that opens offline."""

from __future__ import annotations

import html
from pathlib import Path

from ipa._io import atomic_write_text
from ipa.experiment import plots
from ipa.experiment.cells import SUMMARY_COLUMNS, cell_dir, load_cell, slug
from ipa.display import plain
from ipa.experiment.metrics import has_co2

SHOWN = ["workload", "policy", "pas", "cost_cores", "energy_j", "co2_g", "sla_violation_pct", "dropped_pct",
         "p99_latency_s", "objective"]  # the first table; the rest of summary.csv's columns below it, folded
BASELINES = ("fa2-low", "fa2-high", "rim-high")


def fmt(v) -> str:
    return plain(v) if isinstance(v, float) else str(v)


def headline(summaries: list[dict]) -> list[str]:
    """One sentence per workload on what ipa bought against the baselines: PAS, cores, energy and SLA violations,
    each against every baseline that ran (none where ipa or every baseline is missing)."""
    out = []
    for w in dict.fromkeys(s["workload"] for s in summaries):
        cell = {s["policy"]: s for s in summaries if s["workload"] == w}
        ipa = cell.get("ipa") or cell.get("ipa-energy")
        others = [cell[b] for b in BASELINES if b in cell]
        if ipa is None or not others:
            continue

        def against(key: str, scale: float = 1.0, digits: str = ".3g") -> str:
            return "; ".join(f"{o['policy']} {format(float(o[key]) / scale, digits)}"
                             + (f", {_change(ipa['policy'], float(ipa[key]), float(o[key]))}" if key != "sla_violation_pct" else "")
                             for o in others)

        late = "; ".join(f"{o['policy']} {float(o['sla_violation_pct']):.2f}%" for o in others)
        estimate = " (estimate)" if "estimate" in str(ipa.get("energy_method", "")) else ""
        out.append(f"<b>{html.escape(w)}</b>: {html.escape(ipa['policy'])} served at PAS {float(ipa['pas']):.4f} "
                   f"({against('pas', digits='.4f')}) on {float(ipa['cost_cores']):.1f} cores "
                   f"({against('cost_cores', digits='.1f')}) for {float(ipa['energy_j']) / 1000:,.1f} kJ{estimate} "
                   f"({against('energy_j', 1000, ',.1f')}), and {float(ipa['sla_violation_pct']):.2f}% of its "
                   f"requests missed the SLA ({late}).")
    return out


def _change(name: str, ours: float, theirs: float) -> str:
    """`name`'s figure against a baseline's in words: 'ipa 35% less', 'ipa 12% more', 'the same'."""
    if not theirs:
        return "the same" if not ours else f"{name} more"
    d = (ours - theirs) / abs(theirs) * 100
    return "the same" if abs(d) < 0.5 else f"{name} {abs(d):.0f}% {'more' if d > 0 else 'less'}"


def build_report(out: Path, summaries: list[dict], title: str = "ipa experiment") -> Path:
    method = summaries[0]["energy_method"] if summaries else "estimate"
    body = _section(out, summaries, "", 2)
    return atomic_write_text(out / "report.html", _page(title, _note(summaries, method), body))


def build_suite_report(out: Path, parts: list[tuple[str, str, list[dict]]], title: str = "ipa: every pipeline") -> Path:
    """One page for several experiments (`parts`: pipeline name, its folder under `out`, its summaries), a
    section each, its figures drawn in its own folder."""
    sections = []
    for name, folder, summaries in parts:
        sections.append(f'<h2 id="{html.escape(slug(folder))}">{html.escape(name)}</h2>\n'
                        f'<p>Files: <a href="{html.escape(folder)}/report.html">{html.escape(folder)}/</a></p>\n'
                        + _section(out / folder, summaries, f"{folder}/", 3))
    toc = "".join(f'<li><a href="#{html.escape(slug(f))}">{html.escape(n)}</a></li>' for n, f, _ in parts)
    everything = [s for _, _, summaries in parts for s in summaries]
    method = everything[0]["energy_method"] if everything else "estimate"
    return atomic_write_text(out / "report.html", _page(title, _note(everything, method), f"<ul>{toc}</ul>\n"
                                                       + "\n".join(sections)))


def _section(out: Path, summaries: list[dict], prefix: str, level: int) -> str:
    """Summary table, Ray sections, figures (drawn into `out`, linked as `prefix` + name) and configuration."""
    workloads = list(dict.fromkeys(s["workload"] for s in summaries))
    policies = list(dict.fromkeys(s["policy"] for s in summaries))
    method = summaries[0]["energy_method"] if summaries else "estimate"
    cells = {}
    for s in summaries:
        series, _ = load_cell(out, s["workload"], s["policy"])
        cells[(s["workload"], s["policy"])] = series
    images = [plots.comparison_grid(cells, workloads, policies, out / "comparison.png").name]
    for w in workloads:
        images.append(plots.energy_per_minute(cells, w, policies, out / f"energy_{slug(w)}.png", method).name)
        if any("co2_g" in cells[(w, p)] for p in policies if (w, p) in cells):
            images.append(plots.energy_per_minute(cells, w, policies, out / f"co2_{slug(w)}.png", method,
                                                  "co2_g", "CO2", "g").name)
    images.append(plots.energy_vs_pas(summaries, out / "energy_vs_pas.png", method).name)
    config = (out / "config.yaml").read_text() if (out / "config.yaml").exists() else ""
    h = f"h{level}"
    imgs = "".join(f'<figure><img src="{html.escape(prefix + i)}" alt="{html.escape(i)}"><figcaption>'
                   f"{html.escape(i)}</figcaption></figure>" for i in images)
    shown = [c for c in SHOWN if c != "co2_g" or has_co2(summaries)]
    sentences = "".join(f"<li>{s}</li>" for s in headline(summaries))
    return f"""{f'<ul class="headline">{sentences}</ul>' if sentences else ''}
<{h}>Summary</{h}>
{_table(summaries, shown, {"energy_j": "energy (kJ)"})}
<details><summary>every column of summary.csv</summary>
{_table(summaries, [c for c in SUMMARY_COLUMNS if c not in shown or c in ("workload", "policy")])}
</details>
{_real_sections(out, summaries, h)}
<{h}>Figures</{h}>
{imgs}
<{h}>Configuration</{h}>
<pre>{html.escape(config)}</pre>"""


def _read_csv(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def _real_sections(out: Path, summaries: list[dict], h: str = "h2") -> str:
    """For Ray runs: the fidelity table (sim vs real), reconfiguration timings, and fault events."""
    fidelity = _read_csv(out / "fidelity.csv")
    if not fidelity:
        return ""
    reconf, events = [], []
    for s in summaries:
        cell = cell_dir(out, s["workload"], s["policy"])
        reconf += [{"workload": s["workload"], "policy": s["policy"]} | r for r in _read_csv(cell / "reconfigurations.csv")]
        events += [{"workload": s["workload"], "policy": s["policy"]} | r for r in _read_csv(cell / "events.csv")]
    parts = [
        f"<{h}>Fidelity: simulator vs Ray Serve</{h}><p><b>predicted</b>: the simulator's own control loop on the "
        "profiles the run started from and this machine's CPUs, run before the real cell (what <code>ipa experiment "
        "--max-cores N</code> tells a user before serving), the median over <code>prediction_seeds</code> seeds: one "
        "simulated run is one draw, and near a config's capacity the draw decides what an adaptive loop chooses. "
        "<b>twin</b>: the configs the real run chose, replayed on "
        "what it measured (its calibrated batch times, their pace over time, its reconfiguration delays): a test of "
        "the queueing and admission code, fitted to the run it judges. Real energy is what the run-time meter read "
        "for the whole machine (Ray, HTTP and the load generator included); the simulator's is the profiles' joules "
        "per batch plus serving's and the load generator's CPU, at the profiles' energy method. <b>machine_pace</b>: "
        "the models' CPU per batch over their profiled rows, as the prediction assumed it (the first cell: <code>ipa "
        "profile --serving</code>; each later one: the cell served before it) and as the cell's batches burned it: "
        "where they differ, the machine's own speed moved, and every figure near capacity moves with it. "
        "<b>predicted_low</b>, <b>predicted_high</b>: the prediction's band, each figure's lowest and highest over "
        "the same seeds with the simulated machine at the pace the cell started from and at the fastest and slowest "
        "pace seen over 10 s before it (the refresh's, then the cells'), the plans unchanged: what the prediction "
        "holds possible. <b>same_config_pct</b>: of the prediction's decisions, the share whose config the real loop "
        "also chose then.</p>",
        _table(fidelity, ["workload", "policy", "metric", "predicted", "predicted_low", "predicted_high", "twin",
                          "real", "real_vs_predicted_pct", "real_vs_twin_pct", "note"]),
        f"<{h}>Reconfigurations (measured)</{h}>",
        _table(reconf, ["workload", "policy", "t_s", "kinds", "seconds", "ok", "error"]) if reconf else "<p>none</p>",
        f"<{h}>Fault events</{h}>",
        _table(events, ["workload", "policy", "t_s", "event", "detail"]) if events else "<p>none</p>",
    ]
    return "\n".join(parts)


def _table(rows: list[dict], cols: list[str], headings: dict[str, str] | None = None) -> str:
    """An HTML table of `cols`; a column renamed in `headings` to kJ shows its joules / 1000."""
    headings = headings or {}
    head = "".join(f"<th>{html.escape(headings.get(c, c))}</th>" for c in cols)

    def cell(r: dict, c: str) -> str:
        v = r.get(c, "")
        if "(kJ)" in headings.get(c, "") and v not in ("", None):
            v = float(v) / 1000
        return html.escape(fmt(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _note(summaries: list[dict], method: str) -> str:
    real = any(s.get("runtime") == "ray" for s in summaries)
    if real:
        return (f"Served on Ray Serve; energy read every second by the run-time meter (<b>{html.escape(method)}</b>"
                f"{', an estimate: no energy counter on this machine' if 'estimate' in method else ''}).")
    if "estimate" in method:
        return ("Energy figures are <b>estimates</b> (no energy counter on the profiling machine: CPU time x per-core "
                "power model, see ipa.energy.estimate).")
    return f"Energy figures come from the profiles' measured method: <b>{html.escape(method)}</b>."


def _page(title: str, note: str, body: str) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f3f3f3; }}
td:nth-child(1), td:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
pre {{ background: #f7f7f7; padding: 1em; font-size: 12px; }}
.wide {{ overflow-x: auto; max-width: 100%; }}
.headline li {{ margin: 0.4em 0; line-height: 1.4; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{note} PAS: mean accuracy score of completed requests; cost: mean reserved cores; SLA violations: late or
dropped requests over arrivals; objective: IPA's objective of each decision scored at the interval's true peak
load; sized_for_true_peak_pct: decisions whose config sustained that peak within the SLA.</p>
{body}
</body></html>
"""
