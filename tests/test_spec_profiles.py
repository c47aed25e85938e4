from pathlib import Path

import pytest

from ipa.errors import ConfigError, ProfileError
from ipa.profiles import load_profiles
from ipa.spec import aggregate_accuracy, load_pipeline

ROOT = Path(__file__).parents[1]
GOOD = """\
name: video
sla_s: 1.2
accuracy_method: multiply
stages:
  - name: detect
    variants:
      - {name: ssdlite320_mobilenet_v3_large, accuracy: 21.3, source: "torchvision, COCO box mAP"}
  - name: classify
    variants:
      - {name: resnet18, accuracy: 69.758}
      - {name: resnet50, accuracy: 76.13}
"""
HEADER = "stage,variant,batch,cores,latency_p99_s,throughput_rps,energy_j_per_batch\n"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_pipeline_loads_with_accuracy_as_fraction():
    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    assert spec.stage_names == ["detect", "classify"]
    assert spec.stage("classify").variant("resnet50").accuracy_fraction == pytest.approx(0.7613)


def test_wrong_accuracy_method_names_field_file_and_allowed_values(tmp_path):
    p = write(tmp_path, "p.yaml", GOOD.replace("multiply", "product"))
    with pytest.raises(ConfigError) as e:
        load_pipeline(p)
    msg = str(e.value)
    assert str(p) in msg and "accuracy_method" in msg and "'multiply', 'sum' or 'average'" in msg


def test_unknown_field_lists_allowed_fields(tmp_path):
    p = write(tmp_path, "p.yaml", GOOD.replace("sla_s: 1.2", "sla_s: 1.2\nslo: 3"))
    with pytest.raises(ConfigError, match=r"field 'slo': unknown field[\s\S]*allowed fields here: name, sla_s"):
        load_pipeline(p)


def test_nested_unknown_field_lists_the_variant_fields(tmp_path):
    p = write(tmp_path, "p.yaml", GOOD.replace("accuracy: 69.758}", "accuracy: 69.758, acc5: 89}"))
    with pytest.raises(ConfigError, match=r"stages.1.variants.0.acc5[\s\S]*name, accuracy, source, model, weights"):
        load_pipeline(p)


def test_accuracy_out_of_range_is_rejected(tmp_path):
    p = write(tmp_path, "p.yaml", GOOD.replace("69.758", "169"))
    with pytest.raises(ConfigError, match="stages.1.variants.0.accuracy"):
        load_pipeline(p)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_accuracy_methods():
    assert aggregate_accuracy("multiply", [0.5, 0.8]) == pytest.approx(0.4)
    assert aggregate_accuracy("sum", [0.5, 0.8]) == pytest.approx(1.3)
    assert aggregate_accuracy("average", [0.5, 0.8]) == pytest.approx(0.65)


def test_profile_missing_column_is_named(tmp_path):
    p = write(tmp_path, "p.csv", "stage,variant,batch,cores,latency_p99_s\ndetect,x,1,1,0.1\n")
    with pytest.raises(ProfileError, match="missing required column.*throughput_rps"):
        load_profiles(p)


def test_profile_nonpositive_latency_names_the_row(tmp_path):
    p = write(tmp_path, "p.csv", HEADER + "detect,ssdlite320_mobilenet_v3_large,1,1,0.1,10,1\n"
              "classify,resnet18,1,1,0,10,1\n")
    with pytest.raises(ProfileError, match="row 3: 'latency_p99_s' must be positive"):
        load_profiles(p)


def test_profile_unknown_variant_names_row_and_allowed(tmp_path):
    spec = load_pipeline(write(tmp_path, "p.yaml", GOOD))
    p = write(tmp_path, "p.csv", HEADER + "detect,ssdlite320_mobilenet_v3_large,1,1,0.1,10,1\n"
              "classify,vgg16,1,1,0.1,10,1\n")
    with pytest.raises(ProfileError, match="row 3: unknown variant 'vgg16'.*allowed: resnet18, resnet50"):
        load_profiles(p, spec)


def test_profile_bad_number_names_column(tmp_path):
    p = write(tmp_path, "p.csv", HEADER + "detect,a,one,1,0.1,10,1\n")
    with pytest.raises(ProfileError, match="row 2: column 'batch' must be an integer, got 'one'"):
        load_profiles(p)


def test_profile_roundtrip_keeps_meta(tmp_path, tiny):
    _, table = tiny
    out = table.save(tmp_path / "t.csv")
    again = load_profiles(out)
    assert again.rows == table.rows and again.idle_power_w_per_core == 3.0


def test_shipped_profiles_load_against_the_shipped_pipeline():
    for csv in sorted((ROOT / "profiles").glob("*.csv")):
        pipeline = csv.name.split("-cpu-")[0].split("-h100-")[0]  # profiles/<pipeline>-<machine>.csv
        table = load_profiles(csv, load_pipeline(ROOT / f"configs/pipelines/{pipeline}.yaml"))
        assert table.meta.get("idle_power_w_per_core") is not None
        assert all(p.energy_method for p in table.rows)
