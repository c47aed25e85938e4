import pytest

from ipa.energy.estimate import EstimateMeter
from ipa.errors import ConfigError
from ipa.models.builder import build
from ipa.models.zoo import kind_of, photos_hwc, stage_of
from ipa.profiles import load_profiles
from ipa.profiles.profiler import Plan, ProfilerSettings, run
from ipa.spec import load_pipeline

VIDEO = load_pipeline("configs/pipelines/video.yaml")


@pytest.mark.slow
def test_profiler_measures_a_real_model_and_resumes(tmp_path):
    out = tmp_path / "p.csv"
    meter = EstimateMeter()
    settings = ProfilerSettings(repeats=3, warmup=1, idle_s=0.3, min_window_s=0.2)
    run(VIDEO, [Plan("classify", "resnet18", [1, 2], [1])], out, meter, meter.description, settings)
    table = load_profiles(out)
    assert [(p.batch, p.cores) for p in table.rows] == [(1, 1), (2, 1)]
    for p in table.rows:
        assert p.latency_p99_s > 0 and p.throughput_rps > 0 and p.energy_j_per_batch > 0
        assert p.energy_method == "estimate" and p.load_s > 0
    assert table.meta["energy_method"] == "estimate" and table.meta["cpus"] >= 1
    # a second run with one more batch measures only the missing point
    messages = []
    run(VIDEO, [Plan("classify", "resnet18", [1, 2, 4], [1])], out, meter, meter.description, settings, messages.append)
    assert len(messages) == 1 and "b=4" in messages[0]
    assert len(load_profiles(out).rows) == 3


def test_zoo_builds_detectors_and_classifiers_without_downloads():
    det = build(stage_of("ssdlite320_mobilenet_v3_large"), "ssdlite320_mobilenet_v3_large")
    out = det([photos_hwc()[0]])
    assert det.kind == "detection" and {"boxes", "labels", "scores"} <= set(out[0])
    cls = build(stage_of("resnet18"), "resnet18")
    out = cls(list(photos_hwc()))
    assert cls.kind == "classification" and len(out) == 2 and all(0 <= o["label"] < 1000 for o in out)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ConfigError, match="not a torchvision"):
        kind_of("yolov9z")


@pytest.mark.slow
def test_each_variants_pace_is_measured_against_the_served_ones_alone_on_a_core():
    from dataclasses import replace

    from ipa.profiles.profiler import variant_pace
    from ipa.profiles.table import ProfileTable

    shipped = load_profiles("profiles/video-cpu-2core.csv", VIDEO)
    keep = {("classify", "resnet18"), ("classify", "resnet34"), ("detect", "ssdlite320_mobilenet_v3_large")}
    rows = [p for p in shipped.rows if (p.stage, p.variant) in keep and p.batch == 1 and p.cores == 1]
    table = ProfileTable(rows, shipped.meta, "t")
    reference = {"classify": "resnet18", "detect": "ssdlite320_mobilenet_v3_large"}
    got = variant_pace(VIDEO, table, reference, min_s=0.2)
    assert set(got) == {"classify/resnet34"}  # the served variants are the reference; detect has no other row
    said = []
    broken = ProfileTable(rows + [replace(rows[0], variant="no-such-model")], shipped.meta, "t")
    assert set(variant_pace(VIDEO, broken, reference, min_s=0.2, progress=said.append)) == {"classify/resnet34"}
    assert any("no-such-model: not timed" in m for m in said)  # one that does not build is said and skipped
    # a row that claims a tenth of its CPU makes that variant ten times slower than profiled, relative to resnet18
    cheap = ProfileTable([replace(p, cpu_s_per_batch=p.cpu_s * 0.1) if p.variant == "resnet34" else p for p in rows],
                         shipped.meta, "t")
    assert 5 < variant_pace(VIDEO, cheap, reference, min_s=0.2)["classify/resnet34"] / got["classify/resnet34"] < 20
