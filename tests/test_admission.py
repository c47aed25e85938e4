"""Deadline-aware admission: the estimate, the verdict, the start-by time; and what it does to an overloaded pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ipa.runtime.admission import UNKNOWN, Admission, AdmissionSettings, StageEstimate
from ipa.runtime.sim import SimSettings, Simulator
from ipa.spec import StageConfig


def two_stages(sla=4.0, overhead=0.1, batch=1, replicas=(1, 1), wait=0.5):
    a = Admission(sla, overhead)
    a.configure(0, replicas[0], 1, wait, StageEstimate(0.2, 0.2))
    a.configure(1, replicas[1], batch, wait, StageEstimate(0.5, 0.5 / batch))
    return a


def test_an_empty_pipeline_takes_its_own_batches_and_the_overhead():
    assert two_stages().estimate([0, 0], rate_rps=1.0) == pytest.approx(0.1 + 0.2 + 0.5)


def test_it_waits_for_the_running_batches_to_end_then_for_the_queue_in_rounds():
    # 6 at the second stage: 1 running (half done on average), 5 queued at 0.5 s each
    assert two_stages().estimate([0, 6], 1.0) == pytest.approx(0.1 + (0.25 + 2.5) + 0.5)
    # two replicas: both running end after 1/3 and 2/3 of a batch; 4 queued and this one share them
    assert two_stages(replicas=(1, 2)).estimate([0, 6], 1.0) == pytest.approx(0.1 + (0.5 * 2 / 3 + 0.5 * 3 / 2) + 0.5)


def test_with_many_replicas_it_needs_only_the_first_to_end():
    a = Admission(4.0)
    a.configure(0, 9, 8, 0.5, StageEstimate(2.0, 0.25))
    # 9 batches of 8 running, 3 batches queued: this one is the 4th to need a replica, after 4/10 of a batch
    assert a.estimate([96], 100.0) == pytest.approx(2.0 * 4 / 10 + 2.0 + 7 / 100)


def test_a_free_replica_starts_the_request_at_once():
    # two of three detector replicas busy: this one starts at once; the two ahead then queue for the classifier
    a = two_stages(replicas=(3, 1))
    assert a.estimate([2, 0], 1.0) == pytest.approx(0.1 + 1.0 + 0.5)
    # with three classifier replicas too, nothing waits anywhere
    assert two_stages(replicas=(3, 3)).estimate([2, 0], 1.0) == pytest.approx(0.1 + 0.2 + 0.5)


def test_a_downstream_queue_drains_while_the_request_is_upstream():
    a = Admission(4.0, 0.1)
    a.configure(0, 1, 1, 0.5, StageEstimate(2.0, 2.0))
    a.configure(1, 1, 1, 0.5, StageEstimate(0.5, 0.5))
    # 2 at the fast second stage (0.75 s to clear) are gone before this request leaves the slow first (2 s)
    assert a.estimate([0, 2], 1.0) == pytest.approx(0.1 + 2.0 + 0.5)
    # a request ahead at the first stage is ahead at the second too
    assert a.estimate([1, 0], 1.0) == pytest.approx(0.1 + (1.0 + 2.0) + 0.5)


def test_a_batch_waits_for_the_arrivals_it_still_needs_at_most_the_timeout():
    a = two_stages(batch=4, wait=0.5)
    # alone at a batch-4 stage at 10 rps: 3 more arrivals, 0.3 s
    assert a.estimate([0, 0], 10.0) == pytest.approx(0.1 + 0.2 + 0.3 + 0.5)
    # at 1 rps they would take 3 s: the timeout (0.5 s) sends the batch
    assert a.estimate([0, 0], 1.0) == pytest.approx(0.1 + 0.2 + 0.5 + 0.5)
    # 9 there: a batch of 4 runs, one more batch is queued ahead, and this request's batch has 1 of 4
    assert a.estimate([0, 9], 10.0) == pytest.approx(0.1 + (0.25 + 0.5) + 0.2 + 0.5)


def test_the_verdict_refuses_past_the_sla_and_says_when_to_retry():
    a = two_stages(sla=2.0)
    ok = a.decide([0, 2], 1.0)  # 0.1 + (0.25 + 0.5) + 0.5 = 1.35 s
    assert ok.admit and ok.retry_after_s == 0
    no = a.decide([0, 8], 1.0)  # 0.1 + (0.25 + 3.5) + 0.5 = 4.35 s
    assert not no.admit and no.estimate_s == pytest.approx(4.35) and no.retry_after_s == 3
    strict = Admission(2.0, 0.1, AdmissionSettings(target=0.5))
    strict.configure(0, 1, 1, 0.5, StageEstimate(1.1, 1.1))
    assert not strict.decide([0], 1.0).admit  # 1.2 s > 0.5 x 2 s
    off = Admission(2.0, 0.1, AdmissionSettings(enabled=False))
    off.configure(0, 1, 1, 0.5, StageEstimate(0.9, 0.9))
    assert off.decide([100], 1.0).admit and math.isinf(off.start_by(0.0, 0))


def test_start_by_leaves_room_for_the_stages_still_to_come():
    a = two_stages(sla=4.0, overhead=0.1)
    assert a.start_by(10.0, 0) == pytest.approx(10.0 + 4.0 - 0.1 - 0.7)
    assert a.start_by(10.0, 1) == pytest.approx(10.0 + 4.0 - 0.1 - 0.5)


def test_the_median_follows_measured_batches_and_a_request_is_planned_at_the_tail():
    a = Admission(4.0)
    a.configure(0, 1, 1, 0.5, UNKNOWN)
    assert a.estimate([5], 1.0) == 0.0  # nothing known yet: admit
    a.observe(0, 0.8, 1)
    assert a.estimate([0], 1.0) == pytest.approx(0.8)
    a.observe(0, 1.8, 1)  # the median moves by smoothing 0.2 (0.8 + 0.2 x 1.0); 1.8 is 2.25 x the median before it
    assert a.stages[0].batch_s == pytest.approx(1.0)
    assert a.estimate([0], 1.0) == pytest.approx(2.25)  # its own batch at the tail
    assert a.estimate([1], 1.0) == pytest.approx(0.5 + 2.25)  # the running batch at the median, half done
    assert a.start_by(0.0, 0) == pytest.approx(4.0 - 2.25)


def test_a_slow_stage_makes_the_next_expected_slow_before_its_own_first_slow_batch():
    """On a shared machine what slows the detector slows the classifier: its start-by tightens at once."""
    a = Admission(4.0)
    a.configure(0, 1, 1, 0.5, StageEstimate(0.2, 0.2))
    a.configure(1, 1, 1, 0.5, StageEstimate(0.1, 0.1))
    a.observe(1, 0.1, 1)  # the classifier as planned
    before = a.start_by(0.0, 1)
    for _ in range(3):
        a.observe(0, 0.8, 1)  # the detector's batches at 4x its median
    assert a.slowdown == pytest.approx(2.5)  # the median (rounded up) of 0.8 / (0.2, 0.32, 0.416) and the classifier's 1.0
    assert a.stages[1].tail_s == pytest.approx(0.25) and a.start_by(0.0, 1) == pytest.approx(before - 0.15)
    assert a.overhead_s == 0.0  # nothing profiled: nothing to pace
    for _ in range(12):
        a.observe(0, 0.8, 1)  # the detector's median catches up: the pace falls back
    assert a.slowdown < 1.2 and a.stages[1].tail_s == pytest.approx(0.1, rel=0.2)


def test_serving_time_is_paced_like_the_models():
    a = Admission(4.0, overhead_s=0.05)
    a.configure(0, 1, 1, 0.5, StageEstimate(0.2, 0.2))
    a.observe(0, 0.2, 1)
    a.observe(0, 0.8, 1)  # 4x the median: the pipeline is slow, the proxy and ingress share its CPUs
    assert a.slowdown == pytest.approx(4.0) and a.overhead_s == pytest.approx(0.2)


def test_time_outside_the_models_counts_at_its_tail_never_below_the_profiled():
    a = Admission(4.0, overhead_s=0.05)
    a.configure(0, 1, 1, 0.5, StageEstimate(0.2, 0.2))
    for s in [0.02] * 19 + [1.0]:
        a.observe_outside(s)
    assert a.overhead_s == pytest.approx(0.05)  # one slow answer in twenty is not the tail; the profiled floor holds
    a.observe_outside(1.0)
    a.observe_outside(1.0)  # three in twenty-two are
    assert a.overhead_s == pytest.approx(1.0) and a.estimate([0], 1.0) == pytest.approx(1.2)


# -- the simulator sheds as the ingress does -------------------------------------------------

def overloaded(tiny, admission: AdmissionSettings, load=3.0):
    """The tiny pipeline with one big detector (4 rps at 0.25 s per image) offered `load` x its capacity."""
    spec, table = tiny
    capacity = table.lookup("detect", "big", 1, 1).throughput_rps
    sim = Simulator(spec, table, 3.0, np.full(60, load * capacity), SimSettings(), seed=1, admission=admission)
    sim.start({"detect": StageConfig("big", 1, 1, 1), "classify": StageConfig("r18", 1, 1, 1)})
    sim.run_until(60)
    return sim.result(), capacity, spec.sla_s


def test_overload_is_refused_at_arrival_and_goodput_stays_at_capacity(tiny):
    r, capacity, sla = overloaded(tiny, AdmissionSettings())
    goodput = np.sum(r.latencies <= sla) / 60
    assert goodput >= 0.9 * capacity
    assert r.rejected > 0.5 * r.arrivals  # two thirds of 3x capacity cannot be served
    assert np.percentile(r.latencies, 99) <= sla


def test_without_admission_an_overloaded_queue_serves_everything_late(tiny):
    r, capacity, sla = overloaded(tiny, AdmissionSettings(enabled=False))
    assert np.sum(r.latencies <= sla) / 60 < 0.2 * capacity
    assert r.rejected == 0


def test_a_pace_no_batch_confirms_lapses_so_a_pipeline_that_refused_everything_opens_again():
    a = Admission(4.0)
    a.configure(0, 1, 1, 0.5, StageEstimate(1.0, 1.0))
    a.observe(0, 1.0, 1, now=0.0)
    a.observe(0, 20.0, 1, now=21.0)  # one batch at 20x: the estimate of an empty pipeline passes the SLA
    assert not a.admits([0], 1.0, now=21.5)
    assert a.admits([0], 1.0, now=21.0 + 2 * a.stages[0].batch_s + 0.1)  # no batch since: the pace lapses
    assert a.slowdown == 1.0
