"""Speech and text pipelines on a local Ray cluster: the LibriSpeech clip through audio-qa's real variants,
text through a summarise -> answer pipeline, and what a bad body gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from ipa.errors import ConfigError
from ipa.models.audio import read_wav
from ipa.models.samples import find_speech
from ipa.runtime.ray.cluster import RaySettings, connect, free_port, shutdown
from ipa.runtime.ray.runtime import RayRuntime
from ipa.spec import PipelineSpec, StageConfig, load_pipeline
from tests.test_pipelines import tiny_stage
from tests.test_ray_serving import post

pytestmark = [pytest.mark.slow, pytest.mark.ray]

AUDIO_QA = load_pipeline(Path(__file__).resolve().parents[1] / "configs/pipelines/audio-qa.yaml")
ASR, QA = "facebook/s2t-small-librispeech-asr", "deepset/roberta-base-squad2"


@pytest.fixture(scope="module")
def settings():
    s = RaySettings(port=free_port(), cpus=4, deploy_timeout_s=240)
    started = connect(s, AUDIO_QA)
    yield s
    shutdown(started)


@pytest.fixture(scope="module")
def clip() -> bytes:
    try:
        return find_speech().read_bytes()
    except ConfigError as e:
        pytest.skip(f"the shared LibriSpeech clip is not here: {e}")


def test_audio_qa_transcribes_the_clip_and_answers_from_the_transcript(settings, clip):
    rt = RayRuntime(AUDIO_QA, settings)
    rt.start({"audio": StageConfig(ASR, 1, 1, 1), "nlp-qa": StageConfig(QA, 1, 1, 1)})
    try:
        r = post(rt.url, clip, "audio/wav")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["variants"] == {"audio": ASR, "nlp-qa": QA}
        assert len(body["outputs"]["audio"]["transcript"].split()) == 24  # the spec's generation cap
        assert body["outputs"]["nlp-qa"]["answer"] and 0 <= body["outputs"]["nlp-qa"]["score"] <= 1
        assert body["service_s"] > 0 and body["latency_s"] >= body["service_s"]

        pcm = post(rt.url, read_wav(clip).tobytes(), "application/octet-stream")  # raw 16 kHz float32
        assert pcm.status_code == 200 and pcm.json()["outputs"]["audio"]["transcript"]

        wrong = post(rt.url, b"a question", "text/plain")
        assert wrong.status_code == 415 and "audio/wav" in wrong.json()["error"]
        broken = post(rt.url, b"RIFF\x00\x00\x00\x00WAVEjunk", "audio/wav")
        assert broken.status_code == 400 and "WAV" in broken.json()["error"]
        assert post(rt.url, b"", "audio/wav").status_code == 400
        assert post(rt.url, clip, "audio/wav").status_code == 200, "bad bodies leave the pipeline serving"
    finally:
        rt.stop()


def test_text_pipeline_passes_each_stage_output_on(settings):
    spec = PipelineSpec.model_validate({"name": "sum-qa-tiny", "sla_s": 30, "accuracy_method": "sum",
                                        "samples": "english",
                                        "stages": [tiny_stage("summarization", "tiny-sum", 4),
                                                   tiny_stage("question-answering", "tiny-qa")]})
    rt = RayRuntime(spec, settings)
    rt.start({"summarization": StageConfig("tiny-sum", 1, 1, 1), "question-answering": StageConfig("tiny-qa", 1, 1, 1)})
    try:
        r = post(rt.url, "The council met on Tuesday to discuss the old depot.".encode(), "text/plain; charset=utf-8")
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        assert len(out["summarization"]["summary"].split()) == 4 and out["question-answering"]["answer"]
        assert post(rt.url, json.dumps({"text": "Another text."}).encode(), "application/json").status_code == 200
        bad = post(rt.url, b"\xff\xfe\xfa", "text/plain")
        assert bad.status_code == 400 and "UTF-8" in bad.json()["error"]
        assert post(rt.url, b"x", "image/jpeg").status_code == 415
        assert requests.get(rt.url, timeout=30).json()["stages"] == ["summarization", "question-answering"]
    finally:
        rt.stop()
