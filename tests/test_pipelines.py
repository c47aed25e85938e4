"""IPA's five pipelines: specs, stage kinds beyond images (real forward passes on scaled-down configs), speech
and text inputs, and what a bad body gets."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from ipa.errors import ConfigError
from ipa.models import hf
from ipa.models.audio import log_mel, read_pcm, read_wav, to_wav
from ipa.models.builder import build
from ipa.models.samples import find_speech, stage_items
from ipa.models.zoo import pipeline_kinds, stage_of
from ipa.runtime.ray.media import BadInput, decode_body
from ipa.spec import PipelineSpec, aggregate_accuracy, load_pipeline

PIPELINES = Path(__file__).resolve().parents[1] / "configs/pipelines"
NEW = ("audio-qa", "audio-sent", "nlp", "sum-qa")


def speech_clip() -> Path:
    try:
        return find_speech()
    except ConfigError as e:
        pytest.skip(f"the shared LibriSpeech clip is not here: {e}")


# -- specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [p.stem for p in sorted(PIPELINES.glob("*.yaml"))])
def test_every_shipped_spec_validates_with_a_kind_per_stage(name):
    spec = load_pipeline(PIPELINES / f"{name}.yaml")
    assert all(s.kind for s in spec.stages) and len(pipeline_kinds(spec)) == len(spec.stages)


@pytest.mark.parametrize("name", NEW)
def test_every_variant_of_the_new_pipelines_has_an_architecture(name):
    spec = load_pipeline(PIPELINES / f"{name}.yaml")
    for stage in spec.stages:
        for v in stage.variants:
            assert hf.architecture(v).model_class.endswith(("ForConditionalGeneration", "ForQuestionAnswering",
                                                            "ForSequenceClassification", "MTModel"))


@pytest.mark.parametrize("name", NEW)
def test_shipped_sla_is_ipas_rule_on_the_shipped_profiles(name):
    from ipa.profiles import load_profiles
    from ipa.profiles.sla import ipa_sla

    spec = load_pipeline(PIPELINES / f"{name}.yaml")
    derived = ipa_sla(spec, load_profiles(PIPELINES.parents[1] / f"profiles/{name}-cpu-2core.csv", spec))
    assert spec.sla_s == pytest.approx(derived.sla_s, abs=0.05)


def spec_with(variants: list[dict], normalize: str = "none", method: str = "sum", **stage) -> PipelineSpec:
    return PipelineSpec.model_validate({"name": "t", "sla_s": 10, "accuracy_method": method,
                                        "normalize_accuracy": normalize,
                                        "stages": [{"name": "s", "variants": variants, **stage}]})


def test_negative_wer_scores_as_word_accuracy_with_every_method():
    wer = [{"name": "small", "accuracy": -41.28}, {"name": "large", "accuracy": -33.26}]
    for method in ("multiply", "sum", "average"):
        spec = spec_with(wer, method=method)
        small, large = spec.accuracy_score("s", "small"), spec.accuracy_score("s", "large")
        assert small == pytest.approx(0.5872) and large == pytest.approx(0.6674)
        assert 0 < aggregate_accuracy(method, [small]) < aggregate_accuracy(method, [large])


def test_rank_normalisation_is_ipas():
    spec = spec_with([{"name": "a", "accuracy": -41.28}, {"name": "b", "accuracy": -35.12},
                      {"name": "c", "accuracy": -33.26}], normalize="rank")
    assert [spec.accuracy_score("s", v) for v in "abc"] == [0.0, 0.5, 1.0]
    single = spec_with([{"name": "only", "accuracy": 99.59}], normalize="rank")
    assert single.accuracy_score("s", "only") == 1.0


@pytest.mark.parametrize("stages,words", [
    ([{"name": "s", "variants": [{"name": "a", "accuracy": -40}, {"name": "b", "accuracy": 80}]}], "negated error"),
    ([{"name": "s", "kind": "translation", "variants": [{"name": "a", "accuracy": 30}]}], "max_new_tokens"),
    ([{"name": "s", "kind": "classification", "max_new_tokens": 4, "variants": [{"name": "a", "accuracy": 30}]}],
     "applies to"),
    ([{"name": "asr", "kind": "speech-recognition", "max_new_tokens": 4, "variants": [{"name": "a", "accuracy": -30}]},
      {"name": "cls", "kind": "classification", "variants": [{"name": "b", "accuracy": 70}]}], "takes image"),
    ([{"name": "s", "kind": "poetry", "variants": [{"name": "a", "accuracy": 30}]}], "kind"),
])
def test_a_spec_that_cannot_run_is_refused_naming_why(stages, words):
    from ipa.spec import load_model

    with pytest.raises(ConfigError, match=words):
        load_model(PipelineSpec, {"name": "t", "sla_s": 1, "stages": stages}, "t.yaml")


# -- stage kinds: a real forward pass each, on scaled-down architectures ----------------------

TINY = {
    "speech-recognition": ("Speech2TextForConditionalGeneration", {
        "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "vocab_size": 100,
        "conv_channels": 16, "conv_kernel_sizes": [5, 5], "input_feat_per_channel": 80, "max_source_positions": 1000}),
    "question-answering": ("RobertaForQuestionAnswering", {
        "vocab_size": 500, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 514, "type_vocab_size": 1}),
    "text-classification": ("DistilBertForSequenceClassification", {
        "vocab_size": 500, "dim": 16, "n_layers": 1, "n_heads": 2, "hidden_dim": 32, "num_labels": 3}),
    "translation": ("MarianMTModel", {
        "vocab_size": 500, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 512,
        "pad_token_id": 499, "decoder_start_token_id": 499}),
    "summarization": ("BartForConditionalGeneration", {
        "vocab_size": 500, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 1024}),
}


def tiny_stage(kind: str, name: str = "tiny", cap: int | None = None) -> dict:
    model_class, config = TINY[kind]
    stage = {"name": kind, "kind": kind, "variants": [{"name": name, "accuracy": 50, "architecture": {
        "model_class": model_class, "config": config}}]}
    if kind in ("speech-recognition", "translation", "summarization"):
        stage["max_new_tokens"] = cap or 5
    return stage


def tiny_pipeline(*kinds: str, samples: str | None = None, caps: tuple[int, ...] = ()) -> PipelineSpec:
    stages = [tiny_stage(k, f"tiny-{k}", caps[i] if i < len(caps) else None) for i, k in enumerate(kinds)]
    return PipelineSpec.model_validate({"name": "tiny", "sla_s": 10, "accuracy_method": "sum",
                                        "samples": samples, "stages": stages})


def run_stage(spec: PipelineSpec, stage: str, batch: int = 2) -> list[dict]:
    st = spec.stage(stage)
    runner = build(st, st.variants[0].name)
    assert runner.kind == st.kind
    return runner(stage_items(spec, pipeline_kinds(spec), stage, batch))


def test_speech_recognition_transcribes_the_real_clip_into_capped_words():
    speech_clip()
    spec = tiny_pipeline("speech-recognition", "question-answering", caps=(7,))
    out = run_stage(spec, "speech-recognition")
    assert len(out) == 2 and len(out[0]["transcript"].split()) == 7 and out[0]["text"] == out[0]["transcript"]


def test_question_answering_answers_with_a_span_of_the_context():
    from ipa.models.corpus import QA_CONTEXT

    spec = tiny_pipeline("summarization", "question-answering", samples="english", caps=(4,))
    for o in run_stage(spec, "question-answering", batch=3):
        words = o["answer"].split()
        assert 1 <= len(words) <= hf.MAX_ANSWER_TOKENS and words[0] in QA_CONTEXT and 0 <= o["score"] <= 1


def test_text_classification_labels_and_passes_its_input_on():
    spec = tiny_pipeline("text-classification", "translation", samples="french")
    out = run_stage(spec, "text-classification")
    from ipa.models.corpus import FRENCH

    assert out[0]["label"] in (0, 1, 2) and out[0]["text"] == FRENCH[0] and out[1]["text"] == FRENCH[1]


def test_translation_then_summarisation_generate_exactly_their_caps():
    spec = tiny_pipeline("text-classification", "translation", "summarization", samples="french", caps=(0, 9, 3))
    assert [len(o["translation"].split()) for o in run_stage(spec, "translation")] == [9, 9]
    assert [len(o["summary"].split()) for o in run_stage(spec, "summarization")] == [3, 3]


def test_a_text_model_serves_raw_text_as_a_replica_does():
    spec = tiny_pipeline("summarization", samples="english")
    st = spec.stages[0]
    runner = build(st, st.variants[0].name)
    assert len(runner(["a short text", "another, longer text to summarise."])) == 2
    assert runner([runner.warmup_item()])[0]["summary"]


def test_a_transformers_variant_in_a_stage_without_its_kind_is_a_clear_error():
    from ipa.spec import StageSpec

    stage = StageSpec(name="asr", variants=[{"name": "facebook/s2t-small-librispeech-asr", "accuracy": -40}])
    with pytest.raises(ConfigError, match="needs its kind in the pipeline spec"):
        build(stage, "facebook/s2t-small-librispeech-asr")


# -- speech input ----------------------------------------------------------------------------

def test_the_librispeech_clip_gives_kaldi_shaped_features():
    x = read_wav(speech_clip().read_bytes())
    assert x.dtype == np.float32 and len(x) == 93_680
    feats = log_mel(x)
    assert feats.shape == (584, 80)  # 1 + (93680 - 400) // 160 frames of 80 mel bins
    assert np.allclose(feats.mean(axis=0), 0, atol=1e-4) and np.allclose(feats.std(axis=0), 1, atol=1e-3)


def wav(samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        scale = 2 ** (8 * width - 1) - 1
        ints = (np.repeat(samples, channels) * scale).astype(np.int64)
        data = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints) if width == 3 else \
            ints.astype(f"<i{width}").tobytes()
        w.writeframes(data)
    return buf.getvalue()


def test_any_rate_width_and_channel_count_becomes_16_khz_mono():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.float32)
    for width in (2, 3, 4):
        x = read_wav(wav(tone, 8000, width, channels=2))
        assert len(x) == 16_000 and abs(float(np.abs(x).max()) - 0.5) < 0.02
    assert np.allclose(read_wav(to_wav(tone, 16_000)), tone, atol=1e-4)
    assert np.array_equal(read_pcm(tone.tobytes()), tone)


@pytest.mark.parametrize("body,words", [
    (b"RIFF....WAVEfmt junk", "WAV"), (np.zeros(100, np.float32).tobytes(), "shorter"),
    (np.array([np.nan] * 1000, np.float32).tobytes(), "NaN"), (b"\x00\x01\x02", "multiple of 4"),
])
def test_bad_speech_is_refused_naming_what_is_expected(body, words):
    ctype = "audio/wav" if body.startswith(b"RIFF") else "application/octet-stream"
    with pytest.raises(BadInput) as e:
        decode_body(body, ctype, "audio")
    assert e.value.status == 400 and words in str(e.value)


@pytest.mark.parametrize("body,ctype,media,status,words", [
    (b"hello", "image/jpeg", "audio", 415, "audio/wav"),
    (b"hello", "audio/wav", "text", 415, "text/plain"),
    (b"\xff\xfe\x00bad", "text/plain", "text", 400, "UTF-8"),
    (b"   ", "text/plain; charset=utf-8", "text", 400, "no text"),
    (b"hello", "text/plain; charset=latin-1", "text", 415, "UTF-8"),
    (b'{"txt": 1}', "application/json", "text", 400, "JSON"),
    (b"", "text/plain", "text", 400, "empty"),
    (b"[" * 30_000 + b"]" * 30_000, "application/json", "text", 400, "JSON"),  # nested past the parser's depth
    (b"[" * 200_000 + b"]" * 200_000, "application/json", "image", 400, "nested too deep"),
])
def test_bad_text_or_mismatched_body_gets_a_4xx(body, ctype, media, status, words):
    with pytest.raises(BadInput) as e:
        decode_body(body, ctype, media)
    assert e.value.status == status and words in str(e.value)


def test_good_text_and_json_text_are_read():
    assert decode_body("Bonjour à tous".encode(), "text/plain; charset=utf-8", "text") == "Bonjour à tous"
    assert decode_body(json.dumps({"text": "hi"}).encode(), "application/json", "text") == "hi"


# -- experiments -------------------------------------------------------------------------------

def test_all_five_pipelines_run_into_one_report(tmp_path):
    import csv

    from click.testing import CliRunner

    from ipa.cli import cli
    from ipa.experiment.config import SUITE

    out = tmp_path / "all"
    r = CliRunner().invoke(cli, ["experiment", "--all-pipelines", "--workload", "step:1:3:60:30", "--policy", "ipa",
                                 "--policy", "fa2-low", "--predictor", "max", "--out", str(out)])
    assert r.exit_code == 0, r.output
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["experiment"] for row in rows] == [name for name in SUITE for _ in range(2)]
    assert all(float(row["completed"]) > 0 for row in rows)
    page = (out / "report.html").read_text()
    for name in SUITE:
        assert f'id="{name}"' in page and (out / name / "report.html").is_file()
        assert f'src="{name}/comparison.png"' in page and (out / name / "comparison.png").is_file()
    # IPA's rank-normalised sum: fa2-low runs every stage's least accurate variant, so its PAS is 0 there
    fa2 = {row["experiment"]: float(row["pas"]) for row in rows if row["policy"] == "fa2-low"}
    assert fa2["audio-qa"] == 0.0 and fa2["nlp"] == 1.0  # nlp's language id has one variant (score 1)


# -- IPA's own video variants: YOLOv5 (an optional extra) --------------------------------------

def need_ultralytics() -> None:
    """Skip without the extra, without importing it (importing Ultralytics patches PIL and torch)."""
    import importlib.util

    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("the optional extra is not installed: pip install -e '.[yolo]'")


def test_yolo_boxes_come_back_in_the_photos_own_pixels():
    import torch

    from ipa.models.yolo import _detections, letterbox

    photo = torch.rand(3, 427, 640)
    x, frame = letterbox(photo)
    assert x.shape == (3, 640, 640) and frame == (1.0, 0, 106)  # 427 rows padded to 640: 106 above
    pred = torch.zeros(84, 3)
    pred[:4, 0] = torch.tensor([320.0, 306.0, 100.0, 50.0])  # cx, cy, w, h in the letterboxed frame
    pred[4 + 5, 0] = 0.9  # class 5, confident
    pred[4 + 7, 1] = 0.1  # below the confidence threshold
    out = _detections(pred, frame)
    assert out["boxes"].tolist() == [[270.0, 175.0, 370.0, 225.0]] and out["labels"].tolist() == [6]
    assert out["scores"].tolist() == pytest.approx([0.9])


def test_yolov5_variants_are_detectors_built_from_ultralytics():
    from ipa.models.zoo import kind_of

    assert kind_of("yolov5x") == "detection"
    need_ultralytics()
    runner = build(stage_of("yolov5n"), "yolov5n")
    from ipa.models.zoo import photos_hwc

    out = runner([photos_hwc()[0]])
    assert runner.kind == "detection" and set(out[0]) == {"boxes", "labels", "scores"}
    assert sum(p.numel() for p in runner.serve_batch.module.parameters()) / 1e6 == pytest.approx(2.65, abs=0.1)


def test_building_a_yolo_variant_leaves_pil_and_torch_as_they_were():
    need_ultralytics()
    import torch
    from PIL import Image

    from ipa.runtime.ray.media import decode_image

    before = Image.open, torch.save
    build(stage_of("yolov5n"), "yolov5n")
    assert (Image.open, torch.save) == before
    with pytest.raises(BadInput) as e:  # not a ModuleNotFoundError from a HEIF plugin Ultralytics would install
        decode_image(b"\xff\xd8 truncated", "image/jpeg")
    assert e.value.status == 400
