"""What a request carries, checked and decoded: the content types each kind of pipeline takes, the checks the
headers alone allow (a 4xx before admission), and the decoding of images, audio and text after it."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np


class BadInput(ValueError):
    """The client's fault: answered with a 4xx and a message, never a crashed replica."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# What a pipeline takes, by what its first stage reads: content types, size limit, and the words a 4xx uses
ACCEPTS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "image": (("image/jpeg", "image/png", "application/octet-stream", "application/json"), 20 * 1024 * 1024,
              "a JPEG or PNG image, or JSON {\"image\": \"<base64>\"}"),
    "audio": (("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "application/octet-stream"),
              8 * 1024 * 1024, "a WAV file (PCM), or raw 16 kHz mono float32 samples as application/octet-stream"),
    "text": (("text/plain", "application/json"), 64 * 1024, "UTF-8 text as text/plain, or JSON {\"text\": \"...\"}"),
}


def decode_image(body: bytes, content_type: str) -> np.ndarray:
    """JPEG/PNG bytes, or JSON {"image": base64}, to an RGB uint8 HxWxC array."""
    return decode(image_bytes(body, content_type))


def _ctype(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def check_headers(content_type: str, content_length: str | None, media: str = "image") -> None:
    """What the headers alone say is wrong (type, size): a 4xx before admission, so even under overload."""
    types, limit, expected = ACCEPTS[media]
    ctype = _ctype(content_type)
    if ctype not in types:
        raise BadInput(415, f"content type {ctype or '(none)'!r} not supported: this pipeline takes {expected} "
                            f"(allowed: {', '.join(types)})")
    charset = content_type.lower().partition("charset=")[2].split(";")[0].strip().strip('"')
    if media == "text" and charset and charset not in ("utf-8", "utf8"):
        raise BadInput(415, f"charset {charset!r} not supported: send UTF-8 text")
    if content_length is not None and content_length.strip().isdigit():
        size = int(content_length)
        if size == 0:
            raise BadInput(400, f"empty body: send {expected}")
        if size > limit:
            raise BadInput(413, f"body of {size} bytes exceeds the limit of {limit}")


def _checked_body(body: bytes, content_type: str, media: str) -> None:
    check_headers(content_type, None, media)
    _, limit, expected = ACCEPTS[media]
    if not body:
        raise BadInput(400, f"empty body: send {expected}")
    if len(body) > limit:
        raise BadInput(413, f"body of {len(body)} bytes exceeds the limit of {limit}")


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image's bytes, after the checks that need the body but not its decoding (size, JSON shape)."""
    _checked_body(body, content_type, "image")
    if _ctype(content_type) == "application/json":
        shape = "JSON body must be {\"image\": \"<base64 of a JPEG or PNG>\"}"
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise BadInput(400, f"body is not valid JSON ({e}); {shape}") from None
        except RecursionError:  # a body nested thousands deep: not an image, and never a crashed replica
            raise BadInput(400, f"body is JSON nested too deep; {shape}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise BadInput(400, shape)
        try:
            return base64.b64decode(payload["image"], validate=True)
        except (ValueError, binascii.Error) as e:
            raise BadInput(400, f"field 'image' is not valid base64 ({e}); {shape}") from None
    return body


@dataclass(frozen=True)
class EncodedImage:
    """A request's image as it came (JPEG or PNG bytes), its header checked at the ingress. It is decoded in the
    replica that needs its pixels: the ingress, one process for every request, does no per-pixel work, and the
    bytes (50-100 kB) travel between processes instead of the decoded array (820 kB for a 640x427 photo)."""

    data: bytes
    width: int
    height: int


def check_image(body: bytes, content_type: str) -> EncodedImage:
    """The body's image, checked as far as its header goes (format, size): a 4xx at the ingress for what is not
    a JPEG or PNG. A file that is broken further in is found where it is decoded, and answered 400 as well."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(body, content_type)
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"not a decodable JPEG or PNG image ({e})") from None
    if img.format not in ("JPEG", "PNG"):
        raise BadInput(415, f"image format {img.format} not supported (allowed: JPEG, PNG)")
    return EncodedImage(data, *img.size)


def pixels(item: Any) -> Any:
    """What a model takes for an item: an EncodedImage (or a segmentation prompt (EncodedImage, box)) decoded."""
    if isinstance(item, EncodedImage):
        return decode(item.data)
    if isinstance(item, tuple) and item and isinstance(item[0], EncodedImage):
        return (decode(item[0].data), *item[1:])
    return item


def decode(data: bytes) -> np.ndarray:
    """JPEG or PNG bytes to RGB (the costly part: after admission)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ("JPEG", "PNG"):
            raise BadInput(415, f"image format {img.format} not supported (allowed: JPEG, PNG)")
        if img.format == "JPEG" and img.mode == "RGB":
            fast = _decode_rgb_jpeg(data)
            if fast is not None:
                return fast
        return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"not a decodable JPEG or PNG image ({e})") from None


def _decode_rgb_jpeg(data: bytes) -> np.ndarray | None:
    """A colour JPEG through torchvision's libjpeg-turbo: the pixels Pillow gives (the same library, the same
    settings), for about a third less CPU. None where torchvision is missing or refuses the file (a release without
    these decoders falls back here too): Pillow decodes it, or says why it cannot."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return t.permute(1, 2, 0).contiguous().numpy()  # HWC, as Pillow's


def decode_audio(body: bytes, content_type: str) -> np.ndarray:
    """A WAV file, or raw float32 PCM at 16 kHz, to 16 kHz float32 samples."""
    from ipa.models.audio import AudioError, read_pcm, read_wav

    _checked_body(body, content_type, "audio")
    try:
        if _ctype(content_type) == "application/octet-stream" and not body.startswith(b"RIFF"):
            return read_pcm(body)
        return read_wav(body)
    except AudioError as e:
        raise BadInput(400, f"{e}; this pipeline takes {ACCEPTS['audio'][2]}") from None


def decode_text(body: bytes, content_type: str) -> str:
    """UTF-8 text, or JSON {"text": "..."}, with something in it."""
    _checked_body(body, content_type, "text")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(400, f"body is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if _ctype(content_type) == "application/json":
        try:
            text = json.loads(text)["text"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise BadInput(400, "JSON body must be {\"text\": \"...\"}") from None
        if not isinstance(text, str):
            raise BadInput(400, "JSON field 'text' must be a string")
    if not text.strip():
        raise BadInput(400, f"no text in the body: send {ACCEPTS['text'][2]}")
    return text


def decode_body(body: bytes, content_type: str, media: str) -> Any:
    """The request body as the first stage takes it (after admission): audio as samples, text as a string, an
    image as its checked bytes (`EncodedImage`, decoded in the replica)."""
    if media == "audio":
        return decode_audio(body, content_type)
    if media == "text":
        return decode_text(body, content_type)
    return check_image(body, content_type)
