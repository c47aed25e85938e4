"""A user's own pipeline: models by import path through the one builder protocol (the zoo is its first user), real
checkpoints with their own tokenizers and feature extractors, no downloads, and the spec documented and checked."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ipa.errors import ConfigError
from ipa.models import builder
from ipa.models.builder import ModelError
from ipa.models.zoo import photos_hwc
from ipa.spec import PipelineSpec, StageConfig, load_model, load_pipeline
from tests.custom_models import checkpoints

HERE = Path(__file__).resolve().parent / "custom_models"
ROOT = HERE.parents[1]
HIST = HERE / "pipeline.yaml"
BROKEN = HERE / "broken.yaml"


def hist_models():
    """The user's module, imported as the user would, to call it directly."""
    sys.path.insert(0, str(HERE))
    try:
        import hist_models

        return hist_models
    finally:
        sys.path.remove(str(HERE))


def build(spec: PipelineSpec, stage: str, variant: str, **kw) -> builder.Runner:
    return builder.build(spec.stage(stage), variant, search=builder.search_path(spec), **kw)


def ipa(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipa.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


# -- the builder protocol ------------------------------------------------------------------------

def test_a_variant_of_ones_own_is_built_from_the_yaml_folder_and_answers_as_its_module_does():
    spec = load_pipeline(HIST)
    photos = list(photos_hwc())
    runner = build(spec, "classify", "hist-l")
    assert (runner.kind, runner.source) == ("classification", "hist_models:classifier")
    direct = hist_models().classifier("hist-l", "cpu", None)(photos)
    assert runner(photos) == [{"label": int(o["label"]), "score": o["score"]} for o in direct]
    boxes = build(spec, "detect", "quadrant")(photos)
    assert boxes == [{"boxes": [hist_models().brightest_quadrant(p)], "scores": [1.0]} for p in photos]


def test_the_zoo_is_the_default_factory_of_the_same_protocol():
    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    variant = spec.stage("classify").variant("resnet18")
    assert builder.factory_path(variant) == builder.ZOO
    runner = build(spec, "classify", "resnet18")
    out = runner([photos_hwc()[0], photos_hwc()[1][:40, :60]])
    assert runner.source == builder.ZOO and len(out) == 2 and 0 <= out[0]["label"] < 1000


@pytest.mark.parametrize("variant,words", [
    ("raises", "the factory raised RuntimeError: no GPU in this replica"),
    ("wrong-count", "returned 1 outputs for a batch of 2 inputs"),
    ("not-json", "not JSON-serialisable"),
    ("returns-a-number", "returned int, not a callable"),
    ("not-a-factory", "not a callable factory"),
    ("not-there", "cannot be imported (No module named 'no_such_module')"),
])
def test_a_misbehaving_factory_is_an_error_naming_the_variant_and_the_import_path(variant, words):
    spec = load_pipeline(BROKEN)
    path = spec.stage("classify").variant(variant).model
    with pytest.raises((ConfigError, ModelError)) as e:
        build(spec, "classify", variant)(list(photos_hwc()))
    assert f"'{variant}'" in str(e.value) and path in str(e.value) and words in str(e.value)


def test_a_detector_of_ones_own_must_answer_boxes():
    spec = PipelineSpec.model_validate({"name": "d", "sla_s": 1, "stages": [{"name": "detect", "kind": "detection",
        "variants": [{"name": "nb", "accuracy": 1, "model": "tests.custom_models.broken_models:no_boxes"}]}]})
    with pytest.raises(ModelError, match="a detection stage answers"):
        build(spec, "detect", "nb")([photos_hwc()[0]])


def test_answers_become_plain_json():
    value = {"a": np.float32(0.5), "b": np.arange(3), "c": (np.int64(2), float("nan")), 4: None}
    assert builder.jsonable(value) == {"a": 0.5, "b": [0, 1, 2], "c": [2, None], "4": None}
    with pytest.raises(TypeError):
        builder.jsonable({"x": object()})


@pytest.mark.parametrize("stage,words", [
    ({"name": "s", "variants": [{"name": "mine", "accuracy": 1, "model": "m:f"}]}, "give the stage a kind"),
    ({"name": "s", "kind": "text-classification", "variants": [{"name": "mine", "accuracy": 1, "model": "m:f",
      "architecture": {"model_class": "BertForSequenceClassification"}}]}, "architecture applies to the zoo"),
    ({"name": "s", "kind": "classification", "variants": [{"name": "mine", "accuracy": 1, "model": "m.py"}]},
     "should match pattern"),
])
def test_a_spec_with_an_own_model_it_cannot_run_is_refused(stage, words):
    with pytest.raises(ConfigError, match=words):
        load_model(PipelineSpec, {"name": "t", "sla_s": 1, "stages": [stage]}, "t.yaml")


def test_relative_weights_are_read_from_the_yaml_folder(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    (tmp_path / "p.yaml").write_text("name: p\nsla_s: 1\nstages:\n  - name: c\n    variants:\n"
                                     "      - {name: resnet18, accuracy: 70, weights: w.pth}\n")
    spec = load_pipeline(tmp_path / "p.yaml")
    assert spec.stages[0].variants[0].weights == str(tmp_path / "w.pth") and spec.folder == str(tmp_path)


# -- no surprise downloads -----------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (a model build must never reach the network)."""
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise AssertionError(f"a model build tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.mark.parametrize("kind,name,words", [
    ("classification", "fasterrcnn_mobilenet_v3_large_320_fpn", "is a detection model, but its stage is kind classification"),
    ("detection", "resnet18", "is a classification model, but its stage is kind detection"),
    ("classification", "my_model_v1", "its own model"),
    ("segmentation", "deeplabv3_resnet50", "Segment Anything"),
])
def test_a_name_of_the_wrong_kind_is_refused_before_torch_is_asked(kind, name, words, no_network, capfd):
    spec = PipelineSpec.model_validate({"name": "t", "sla_s": 1, "stages": [
        {"name": "s", "kind": kind, "variants": [{"name": name, "accuracy": 1}]}]})
    with pytest.raises(ConfigError, match=words):
        build(spec, "s", name)
    assert not no_network and "Downloading" not in "".join(capfd.readouterr())


def test_zoo_and_checkpoint_builds_open_no_socket(no_network, capfd, tmp_path):
    from tests.test_pipelines import tiny_pipeline

    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    for stage, variant in (("detect", "ssdlite320_mobilenet_v3_large"), ("classify", "resnet18")):
        build(spec, stage, variant)
    text = tiny_pipeline("text-classification", samples="english")
    build(text, "text-classification", "tiny-text-classification")(["a text"])
    folder = checkpoints.text_classifier(tmp_path / "ckpt")
    ckpt = reviews_spec(folder)
    build(ckpt, "sentiment", "my-sentiment")(["good food"])
    assert not no_network and "Downloading" not in "".join(capfd.readouterr())


# -- real checkpoints, real preprocessing --------------------------------------------------------

def reviews_spec(folder: Path) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": "reviews", "sla_s": 10, "samples": "english", "stages": [
        {"name": "sentiment", "kind": "text-classification",
         "variants": [{"name": "my-sentiment", "accuracy": 91.0, "weights": str(folder)}]}]})


def direct_label(folder: Path, text: str) -> tuple[str, float]:
    """What transformers itself answers with the checkpoint's own tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        probs = model(**tok([text], return_tensors="pt")).logits.softmax(-1)[0]
    return model.config.id2label[int(probs.argmax())], float(probs.max())


def test_a_checkpoint_text_classifier_uses_its_own_tokenizer_and_labels(tmp_path):
    folder = checkpoints.text_classifier(tmp_path / "ckpt")
    text = "the food was good and the service great"
    [out] = build(reviews_spec(folder), "sentiment", "my-sentiment")([text])
    label, score = direct_label(folder, text)
    assert out["preprocessing"] == "checkpoint" and out["label"] == label in ("negative", "positive")
    assert out["score"] == pytest.approx(score, abs=1e-4) and out["text"] == text


def test_random_weights_say_their_preprocessing_is_synthetic():
    from tests.test_pipelines import tiny_pipeline

    spec = tiny_pipeline("text-classification", samples="english")
    [out] = build(spec, "text-classification", "tiny-text-classification")(["a text"])
    assert out["preprocessing"] == "synthetic" and isinstance(out["label"], int)


def test_a_checkpoint_question_answerer_answers_a_span_of_the_context(tmp_path):
    from ipa.models.corpus import QA_CONTEXT

    folder = checkpoints.question_answerer(tmp_path / "qa")
    spec = PipelineSpec.model_validate({"name": "qa", "sla_s": 10, "samples": "english", "stages": [
        {"name": "qa", "kind": "question-answering", "variants": [{"name": "my-qa", "accuracy": 80, "weights": str(folder)}]}]})
    out = build(spec, "qa", "my-qa")(["who met on tuesday?", "what was discussed"])
    assert all(o["preprocessing"] == "checkpoint" and o["answer"] and o["answer"] in QA_CONTEXT for o in out)


def test_a_checkpoint_speech_recognizer_uses_its_own_feature_extractor(tmp_path):
    import torch
    from transformers import (
        AutoFeatureExtractor,
        AutoModelForSpeechSeq2Seq,
        AutoTokenizer,
    )

    folder = checkpoints.speech_recognizer(tmp_path / "asr")
    spec = PipelineSpec.model_validate({"name": "asr", "sla_s": 10, "stages": [
        {"name": "asr", "kind": "speech-recognition", "max_new_tokens": 6,
         "variants": [{"name": "my-asr", "accuracy": -20, "weights": str(folder)}]}]})
    audio = np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32)
    [out] = build(spec, "asr", "my-asr")([audio])
    fe = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        ids = model.generate(**fe([audio], sampling_rate=16_000, return_attention_mask=True, return_tensors="pt"),
                             max_new_tokens=6)
    assert out["preprocessing"] == "checkpoint"
    assert out["transcript"] == tok.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_a_checkpoint_folder_without_its_tokenizer_is_a_clear_error(tmp_path):
    folder = checkpoints.text_classifier(tmp_path / "ckpt")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).unlink()
    with pytest.raises(ConfigError, match="no usable tokenizer.*save it beside the model"):
        build(reviews_spec(folder), "sentiment", "my-sentiment")


def test_a_missing_checkpoint_is_an_error_not_a_download(tmp_path):
    spec = reviews_spec(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not found"):
        build(spec, "sentiment", "my-sentiment")
    video = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    with pytest.raises(ConfigError, match=r"looked for .*resnet18/ .*resnet18\.pth"):
        build(video, "classify", "resnet18", weights_dir=tmp_path)


def test_a_torchvision_checkpoint_is_fed_torchvisions_own_imagenet_transform(tmp_path):
    import torch
    import torchvision

    from ipa.models.zoo import to_classifier_input

    photo = photos_hwc()[0]
    standard = torchvision.models.ResNet18_Weights.DEFAULT.transforms()  # the transform only: nothing downloaded
    expected = standard(torch.from_numpy(photo).permute(2, 0, 1))
    assert torch.equal(to_classifier_input(photo), expected)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "resnet18.pth")
    video = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    [out] = build(video, "classify", "resnet18", weights_dir=tmp_path)([photo])
    with torch.inference_mode():
        direct = net.eval()(expected.unsqueeze(0)).softmax(-1)[0]
    assert out["label"] == int(direct.argmax())


# -- the documented spec ----------------------------------------------------------------------------

def test_spec_schema_documents_every_field_of_the_yaml():
    r = ipa("spec", "schema")
    schema = json.loads(r.stdout)
    variant = schema["$defs"]["VariantSpec"]["properties"]
    assert r.returncode == 0 and {"model", "weights", "architecture", "accuracy"} <= set(variant)
    assert "import path" in variant["model"]["anyOf"][0].get("description", variant["model"].get("description", ""))


def test_spec_check_says_what_it_infers_and_exits_2_on_a_module_that_is_not_there():
    ok = ipa("spec", "check", str(HIST))
    assert ok.returncode == 0, ok.stderr
    assert "hist_models:classifier" in ok.stdout and "image -> detect -> image -> classify -> label" in ok.stdout
    assert "ipa profile --pipeline" in ok.stdout  # no profiles yet: how to measure them
    bad = ipa("spec", "check", str(BROKEN))
    assert bad.returncode == 2 and "'not-there'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_readme_example_checks_and_its_classifier_serves_a_batch():
    example = load_pipeline(ROOT / "examples/custom/pipeline.yaml")
    r = ipa("spec", "check", "examples/custom/pipeline.yaml")
    assert r.returncode == 0 and "my_models:classifier" in r.stdout
    out = build(example, "classify", "tinynet-s")(list(photos_hwc()))
    assert len(out) == 2 and set(out[0]) == {"label", "score"}


# -- profile -> experiment, as a user runs them -----------------------------------------------------

@pytest.mark.slow
def test_profile_then_experiment_on_a_pipeline_of_ones_own(tmp_path):
    profiles = tmp_path / "hist.csv"
    r = ipa("profile", "--pipeline", str(HIST), "--batches", "1,2", "--cores", "1", "--repeats", "3", "--warmup", "1",
            "--min-window", "0.05", "--out", str(profiles), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    from ipa.profiles import load_profiles

    table = load_profiles(profiles, load_pipeline(HIST))
    assert {(p.variant, p.batch) for p in table.rows} == {(v, b) for v in ("quadrant", "hist-s", "hist-l") for b in (1, 2)}
    assert table.meta["models"]["hist-l"] == "hist_models:classifier"
    exp = ipa("experiment", "--pipeline", str(HIST), "--profiles", str(profiles), "--workload", "static:3:60",
              "--policy", "fa2-low", "--policy", "fa2-high", "--out", str(tmp_path / "exp"), cwd=tmp_path)
    assert exp.returncode == 0, exp.stderr[-2000:]
    with (tmp_path / "exp/cells/static_3_60__fa2-high/decisions.csv").open() as f:
        # the configs only: the calibration column names every variant of a stage once the stage's ratio moves
        chosen = {json.loads(row["config"])["classify"]["variant"] for row in csv.DictReader(f)}
    assert chosen == {"hist-l"}
    missing = ipa("experiment", "--pipeline", str(HIST), "--workload", "static:3:60", "--policy", "ipa", cwd=tmp_path)
    assert missing.returncode == 2 and "ipa profile --pipeline" in missing.stderr


def test_a_broken_factory_stops_ipa_profile_with_rc_2_naming_it(tmp_path):
    r = ipa("profile", "--pipeline", str(BROKEN), "--stage", "classify", "--variants", "raises", "--batches", "1",
            "--cores", "1", "--out", str(tmp_path / "p.csv"))
    assert r.returncode == 2 and "'raises'" in r.stderr and "broken_models:raises" in r.stderr
    assert "Traceback" not in r.stderr


# -- served on Ray, answered over HTTP ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    from ipa.runtime.ray.cluster import RaySettings, connect, free_port, shutdown

    settings = RaySettings(port=free_port(), cpus=4, deploy_timeout_s=240)
    started = connect(settings, load_pipeline(HIST))
    yield settings
    shutdown(started)


def png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def stages(classifier: str) -> dict:
    from ipa.spec import StageConfig

    return {"detect": StageConfig("quadrant", 1, 1, 1), "classify": StageConfig(classifier, 1, 1, 1)}


@pytest.mark.slow
@pytest.mark.ray
def test_a_pipeline_of_ones_own_serves_over_http_what_its_module_answers(cluster):
    from ipa.runtime.ray.runtime import RayRuntime
    from tests.test_ray_serving import post

    module = hist_models()
    photo = photos_hwc()[1]
    rt = RayRuntime(load_pipeline(HIST), cluster)
    rt.start(stages("hist-s"))
    try:
        for variant in ("hist-s", "hist-l"):
            if variant != "hist-s":
                rt.apply(stages(variant))
                assert rt.reconfigurations[-1].ok, rt.reconfigurations[-1].error
            r = post(rt.url, png(photo), "image/png")
            assert r.status_code == 200, r.text
            body = r.json()
            box = module.brightest_quadrant(photo)
            assert body["variants"] == {"detect": "quadrant", "classify": variant}
            assert body["outputs"]["detect"] == {"boxes": [box], "scores": [1.0]}
            [direct] = module.classifier(variant, "cpu", None)([photo[box[1]:box[3], box[0]:box[2]]])
            served = body["outputs"]["classify"]
            assert served["label"] == int(direct["label"]) and served["score"] == pytest.approx(direct["score"], abs=1e-5)
            assert body["detections"][0]["box"] == box and body["detections"][0]["label"] == served["label"]
    finally:
        rt.stop()


@pytest.mark.slow
@pytest.mark.ray
def test_a_factory_that_raises_keeps_the_old_config_and_a_model_that_fails_answers_500(cluster):
    from ipa.runtime.ray.runtime import RayRuntime
    from tests.test_ray_serving import post

    rt = RayRuntime(load_pipeline(BROKEN), cluster.model_copy(update={"deploy_timeout_s": 120}))
    rt.start(stages("hist-s"))
    try:
        rt.apply(stages("raises"))
        failed = rt.reconfigurations[-1]
        assert not failed.ok and "broken_models:raises" in failed.error and "no GPU in this replica" in failed.error
        assert rt.config == stages("hist-s")
        ok = post(rt.url, png(photos_hwc()[0]), "image/png")
        assert ok.status_code == 200 and ok.json()["variants"]["classify"] == "hist-s"

        rt.apply(stages("fails-on-large"))  # serves its warm-up image, so it deploys
        assert rt.reconfigurations[-1].ok, rt.reconfigurations[-1].error
        bad = post(rt.url, png(photos_hwc()[0]), "image/png")
        assert bad.status_code == 500 and bad.json()["reason"] == "model error"
        assert "'fails-on-large'" in bad.json()["error"] and "broken_models:fails_on_large_images" in bad.json()["error"]
        small = post(rt.url, png(np.full((150, 150, 3), 200, np.uint8)), "image/png")  # crops of 75 rows: served
        assert small.status_code == 200, small.text
    finally:
        rt.stop()


@pytest.mark.slow
@pytest.mark.ray
def test_requests_while_the_stages_load_get_503_starting_and_get_is_not_ready(cluster):
    """Behind HAProxy the ingress takes HTTP before the stages have loaded: it says so (GET / 503, a POST 503
    `starting` with Retry-After) instead of holding the request until it expires."""
    import threading

    import requests

    from ipa.runtime.ray.runtime import RayRuntime
    from tests.test_ray_serving import post

    rt = RayRuntime(load_pipeline(HERE / "slow.yaml"), cluster)
    starting = threading.Thread(target=rt.start, args=({"detect": StageConfig("quadrant", 1, 1, 1),
                                                        "classify": StageConfig("slow-to-load", 1, 1, 1)},))
    starting.start()
    seen: dict = {}
    try:
        while starting.is_alive() and "post" not in seen:
            try:
                got = requests.get(rt.url, timeout=5)
            except requests.ConnectionError:  # the ingress is not up yet
                time.sleep(0.3)
                continue
            if got.status_code == 503 and got.json().get("ready") is False:
                seen["get"] = got.json()
                seen["post"] = post(rt.url, png(photos_hwc()[0]), "image/png")
        starting.join(240)
        assert "post" in seen, "the ingress never answered while the classifier loaded"
        assert seen["post"].status_code == 503 and seen["post"].json()["reason"] == "starting"
        assert seen["post"].headers["Retry-After"] == "2"
        ready = requests.get(rt.url, timeout=30)
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert post(rt.url, png(photos_hwc()[0]), "image/png").status_code == 200
    finally:
        starting.join(240)
        rt.stop()


@pytest.mark.slow
@pytest.mark.ray
def test_a_served_checkpoint_text_classifier_answers_the_label_transformers_gives(cluster, tmp_path):
    from ipa.runtime.ray.runtime import RayRuntime
    from ipa.spec import StageConfig
    from tests.test_ray_serving import post

    folder = checkpoints.text_classifier(tmp_path / "ckpt")
    rt = RayRuntime(reviews_spec(folder), cluster)
    rt.start({"sentiment": StageConfig("my-sentiment", 1, 1, 1)})
    try:
        for text in checkpoints.TEXTS[:2]:
            r = post(rt.url, text.encode(), "text/plain; charset=utf-8")
            assert r.status_code == 200, r.text
            out = r.json()["outputs"]["sentiment"]
            label, score = direct_label(folder, text)
            assert out["label"] == label and out["score"] == pytest.approx(score, abs=1e-4)
            assert out["preprocessing"] == "checkpoint"
    finally:
        rt.stop()
