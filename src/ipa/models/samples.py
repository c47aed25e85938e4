"""The real inputs a pipeline is profiled and loaded with: photos, the LibriSpeech clip, or text.

A stage is profiled with what it receives when the pipeline runs: the pipeline's input for the first
stage (and after a stage that passes its input on), and after a generative stage a text of as many
words as that stage's generation cap (with random weights every generated token is a word).
"""

from __future__ import annotations

import io
import os
from functools import cache
from pathlib import Path
from typing import Any

from ipa._shared import shared_locations
from ipa.errors import ConfigError
from ipa.models import corpus
from ipa.spec import GENERATIVE, MEDIA, PipelineSpec

SPEECH_ENV = "IPA_SPEECH"
SPEECH_SHARED = Path("shared/data/speech/librispeech-1272-128104-0000.wav")


def sample_set(spec: PipelineSpec, kinds: list[str]) -> str:
    """The pipeline's samples: as its spec says, else from what its first stage takes."""
    if spec.samples:
        return spec.samples
    return {"image": "photos", "audio": "speech", "text": "english"}[MEDIA[kinds[0]][0]]


def find_speech(explicit: str | Path | None = None) -> Path:
    """The speech clip: `explicit`, else $IPA_SPEECH, else ../shared/data/speech/ next to the working
    directory or the checkout. Like the trace, it is shared data: never part of the repository."""
    if explicit or os.environ.get(SPEECH_ENV):
        p = Path(explicit or os.environ[SPEECH_ENV])
        if not p.is_file():
            raise ConfigError(f"speech clip {p}: no such file")
        return p
    tried = []
    for p in shared_locations(SPEECH_SHARED):
        if p.is_file():
            return p
        tried.append(str(p))
    raise ConfigError(f"no speech clip found (looked at {SPEECH_ENV}, {', '.join(tried)}): speech pipelines are "
                      "profiled and loaded with a real 16 kHz WAV clip; set IPA_SPEECH=PATH to one "
                      "(LibriSpeech's 1272-128104-0000 is the one IPA uses)")


@cache
def speech_wav() -> bytes:
    return find_speech().read_bytes()


@cache
def speech_samples():
    from ipa.models.audio import read_wav

    return read_wav(speech_wav())


def texts(name: str) -> tuple[str, ...]:
    return corpus.FRENCH if name == "french" else corpus.ENGLISH


def generated_text(words: int) -> str:
    """A text of `words` words, standing for what a capped generative stage hands on."""
    vocab = corpus.SPEECH_TRANSCRIPT.split()
    return " ".join(vocab[i % len(vocab)] for i in range(words))


def stage_items(spec: PipelineSpec, kinds: list[str], stage: str, batch: int) -> list[Any]:
    """`batch` inputs of `stage` as the pipeline hands them to it (raw: photos, (photo, box) pairs for a
    segmenter, samples, texts): what its batch callable is profiled with."""
    i = spec.stage_names.index(stage)
    source = sample_set(spec, kinds)
    for j in range(i - 1, -1, -1):  # the nearest stage before this one that makes new text
        if kinds[j] in GENERATIVE:
            return [generated_text(spec.stages[j].max_new_tokens or 1)] * batch
    if source == "speech":
        return [speech_samples()] * batch
    if source == "photos":
        from ipa.models.zoo import central_box, photos_hwc

        photos = [photos_hwc()[k % len(photos_hwc())] for k in range(batch)]
        return [(p, central_box(p)) for p in photos] if kinds[i] == "segmentation" else photos
    pool = texts(source)
    return [pool[k % len(pool)] for k in range(batch)]


def request_bodies(spec: PipelineSpec, kinds: list[str]) -> tuple[list[bytes], str]:
    """What a client sends this pipeline: (bodies, content type)."""
    source = sample_set(spec, kinds)
    if source == "photos":
        return photo_jpegs(), "image/jpeg"
    if source == "speech":
        return [speech_wav()], "audio/wav"
    return [t.encode() for t in texts(source)], "text/plain; charset=utf-8"


def photo_jpegs(width: int | None = None) -> list[bytes]:
    """The shipped photos as JPEG bodies, optionally resized to `width` pixels wide."""
    from PIL import Image

    from ipa.models.zoo import photos_hwc

    out = []
    for p in photos_hwc():
        img = Image.fromarray(p)
        if width:
            img = img.resize((width, round(p.shape[0] * width / p.shape[1])))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out
