"""Speech input in numpy: WAV or raw PCM to 16 kHz float32, then the 80-bin log-mel filterbanks Speech2Text reads.

torchaudio has no build for the pinned torch, so the features are Kaldi's `fbank` written out here
(25 ms Povey windows every 10 ms, pre-emphasis 0.97, 512-point FFT, mel filters 20 Hz-8 kHz, log energies)
followed by per-utterance mean and variance normalisation, as Speech2Text's feature extractor does.
"""

from __future__ import annotations

import io
import wave
from functools import cache

import numpy as np

RATE = 16_000
N_MELS = 80
MAX_SECONDS = 60.0  # longer speech is refused: Speech2Text reads at most 6000 frames (60 s)
_FRAME, _SHIFT, _NFFT = 400, 160, 512


class AudioError(ValueError):
    """The body is not speech this pipeline can read (the message says what is expected)."""


def read_wav(data: bytes) -> np.ndarray:
    """A WAV file (PCM 8/16/24/32-bit, any rate, mono or the mean of its channels) as 16 kHz float32 in [-1, 1]."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise AudioError(f"not a readable PCM WAV file ({e})") from None
    if width == 1:
        x = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    elif width in (2, 4):
        x = np.frombuffer(frames, f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        b = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    else:
        raise AudioError(f"WAV samples of {width} bytes are not supported (allowed: 8, 16, 24 or 32-bit PCM)")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    return checked(resample(x, rate))


def read_pcm(data: bytes) -> np.ndarray:
    """Raw little-endian float32 samples at 16 kHz, mono."""
    if len(data) % 4:
        raise AudioError(f"raw PCM must be float32 samples (a multiple of 4 bytes), got {len(data)} bytes")
    return checked(np.frombuffer(data, "<f4").astype(np.float32))


def checked(x: np.ndarray) -> np.ndarray:
    if len(x) < _FRAME:
        raise AudioError(f"{len(x)} samples is shorter than one 25 ms frame at 16 kHz ({_FRAME} samples)")
    if len(x) > MAX_SECONDS * RATE:
        raise AudioError(f"{len(x) / RATE:.1f} s of speech exceeds the limit of {MAX_SECONDS:g} s")
    if not np.isfinite(x).all():
        raise AudioError("the samples hold NaN or infinite values")
    return x


def resample(x: np.ndarray, rate: int) -> np.ndarray:
    """To 16 kHz by band-limited (FFT) resampling; 16 kHz input is returned as it is."""
    if rate == RATE:
        return x
    if rate <= 0:
        raise AudioError(f"sample rate {rate} is not valid")
    n = max(1, round(len(x) * RATE / rate))
    spectrum = np.fft.rfft(x)
    keep = min(len(spectrum), n // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n) * (n / len(x))
    return out.astype(np.float32)


def log_mel(x: np.ndarray) -> np.ndarray:
    """(frames, 80) normalised log-mel filterbank energies of 16 kHz samples."""
    pcm = x.astype(np.float64) * 32768.0  # Kaldi works on 16-bit sample values
    n = 1 + (len(pcm) - _FRAME) // _SHIFT
    idx = np.arange(_FRAME)[None, :] + _SHIFT * np.arange(n)[:, None]
    frames = pcm[idx]
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1]
    frames[:, 0] *= 1 - 0.97
    frames *= _povey()
    power = np.abs(np.fft.rfft(frames, _NFFT)) ** 2
    feats = np.log(np.maximum(power @ _mel_banks().T, np.finfo(np.float64).eps))
    feats = (feats - feats.mean(axis=0)) / np.maximum(feats.std(axis=0), 1e-10)
    return feats.astype(np.float32)


@cache
def _povey() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_FRAME) / (_FRAME - 1))) ** 0.85


@cache
def _mel_banks() -> np.ndarray:
    """Kaldi's triangular filters on the mel scale 1127 ln(1 + f / 700), 20 Hz to the Nyquist frequency."""
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(RATE / 2)
    edges = lo + (hi - lo) * np.arange(N_MELS + 2) / (N_MELS + 1)
    bins = mel(np.arange(_NFFT // 2 + 1) * RATE / _NFFT)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    return np.maximum(0.0, np.minimum(up, down))


def to_wav(x: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit PCM WAV bytes of float samples (what a client sends)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()
