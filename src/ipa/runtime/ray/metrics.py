"""What the ingress tells Prometheus (`GET /metrics`): requests by outcome, latency, requests in flight, requests
shed and refused, the active config, energy, power and carbon. Each ingress replica keeps its own; the ledger merges
them (`Tally.metric_families`) and `Merged` serves the merged families."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PCounter


class IngressMetrics:
    def __init__(self, sla_s: float):
        reg = self.registry = CollectorRegistry()
        self.requests = PCounter("ipa_requests", "Requests by outcome", ["code"], registry=reg)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, sla_s / 2, sla_s, 2 * sla_s, float("inf"))
        self.latency = Histogram("ipa_request_latency_seconds", "End-to-end latency at the ingress",
                                 buckets=sorted(set(buckets)), registry=reg)
        self.in_flight = Gauge("ipa_in_flight_requests", "Requests in the pipeline", registry=reg)
        self.rejected = PCounter("ipa_shed", "Requests shed, by reason", ["reason"], registry=reg)
        self.refused = PCounter("ipa_refused", "Requests refused as bad input (not load), by status", ["code"],
                                registry=reg)
        self.stage = Gauge("ipa_stage_config", "Active config per stage (value: the knob)",
                           ["stage", "variant", "knob"], registry=reg)
        self.energy = Gauge("ipa_energy_joules", "Energy since the run started, by domain",
                            ["domain", "method"], registry=reg)
        self.power = Gauge("ipa_power_watts", "Power over the last sample", ["method"], registry=reg)
        self.co2 = Gauge("ipa_co2_grams", "Grams of CO2 of the energy since the run started, at the grid's "
                         "intensity of each second (with ipa serve --carbon)", ["method"], registry=reg)
        self.intensity = Gauge("ipa_carbon_intensity_g_per_kwh", "The grid's carbon intensity now", registry=reg)

    def observe(self, config: dict[str, dict[str, Any]] | None = None, energy: dict[str, Any] | None = None) -> None:
        """The runtime's report: the active config and the latest energy reading."""
        if config is not None:
            self.stage.clear()
            for stage, c in config.items():
                for knob in ("batch", "replicas", "cores"):
                    self.stage.labels(stage, c["variant"], knob).set(c[knob])
        if energy is not None:
            for domain, j in energy["joules"].items():
                self.energy.labels(domain, energy["method"]).set(j)
            self.power.labels(energy["method"]).set(energy["watts"])
            if "co2_g" in energy:
                self.co2.labels(energy["method"]).set(energy["co2_g"])
                self.intensity.set(energy["g_per_kwh"])


class Merged:
    """A collector over the ledger's merged families, for prometheus_client's `generate_latest`."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)
