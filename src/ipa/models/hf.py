"""Speech and text variants: `transformers` architectures built from their published sizes, random weights.

The sizes are those of each model's published `config.json` (../shared/PIPELINES.md; "assumed" where the
model's own config was not confirmed). Nothing is downloaded: `Class(Config(**sizes))` gives the real
architecture and so the real compute; accuracy is the published figure, as for the vision variants.

Preprocessing belongs to the weights. A checkpoint folder (`save_pretrained`'s: config.json, the weights, the
tokenizer or feature extractor) brings its own: its tokenizer (`AutoTokenizer`), its feature extractor for speech,
its labels (`id2label`), its generation settings, all read with `local_files_only=True`. Random weights have no
tokenizer worth the name: any vocabulary mapping is as good as the real one, and what costs is the sequence
length. Their text is cut into words and marks, long words into pieces of at most six characters (about what a
subword tokenizer makes of plain text), each hashed into the variant's vocabulary; generated ids decode to words
of a fixed list, so downstream stages get real text of the capped length; speech becomes log-mel features in
numpy (`ipa.models.audio`). Every answer says which it had: `"preprocessing": "checkpoint"` or `"synthetic"`.
Nothing here reaches the network: the hub is switched off (HF_HUB_OFFLINE) unless the environment says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ipa.errors import ConfigError
from ipa.spec import ArchitectureSpec, StageSpec, VariantSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
log = logging.getLogger(__name__)

KINDS = ("speech-recognition", "question-answering", "text-classification", "translation", "summarization")
MAX_TOKENS = 512  # input tokens kept (the QA and classification models read at most 512)
MAX_ANSWER_TOKENS = 30

_S2T = {"encoder_layers": 12, "decoder_layers": 6, "vocab_size": 10000, "conv_channels": 1024,
        "conv_kernel_sizes": [5, 5], "input_feat_per_channel": 80, "max_source_positions": 6000}
_ROBERTA_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "max_position_embeddings": 514, "type_vocab_size": 1}
_DISTILBERT = {"dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072, "vocab_size": 30522}
_BART = {"d_model": 1024, "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
         "decoder_ffn_dim": 4096, "activation_function": "gelu", "max_position_embeddings": 1024, "vocab_size": 50264}


def _arch(model_class: str, **config: Any) -> ArchitectureSpec:
    return ArchitectureSpec(model_class=model_class, config=config)


# variant name -> architecture (PIPELINES.md, from each model's config.json)
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "facebook/s2t-small-librispeech-asr": _arch(
        "Speech2TextForConditionalGeneration", d_model=256, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, **_S2T),
    "facebook/s2t-medium-librispeech-asr": _arch(
        "Speech2TextForConditionalGeneration", d_model=512, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, **_S2T),
    "facebook/s2t-large-librispeech-asr": _arch(
        "Speech2TextForConditionalGeneration", d_model=1024, encoder_attention_heads=16, decoder_attention_heads=16,
        encoder_ffn_dim=4096, decoder_ffn_dim=4096, **_S2T),
    "deepset/roberta-base-squad2": _arch("RobertaForQuestionAnswering", vocab_size=50265, **_ROBERTA_BASE),
    "deepset/xlm-roberta-base-squad2": _arch("XLMRobertaForQuestionAnswering", vocab_size=250002, **_ROBERTA_BASE),
    "distilbert-base-uncased-finetuned-sst-2-english": _arch(
        "DistilBertForSequenceClassification", num_labels=2, **_DISTILBERT),
    "Souvikcmsa/BERT_sentiment_analysis": _arch(  # bert-base sizes (assumed)
        "BertForSequenceClassification", num_labels=3, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, vocab_size=30522),
    "Souvikcmsa/SentimentAnalysisDistillBERT": _arch(  # distilbert-base sizes (assumed)
        "DistilBertForSequenceClassification", num_labels=3, **_DISTILBERT),
    "Souvikcmsa/Roberta_Sentiment_Analysis": _arch(  # roberta-large sizes (assumed from its 1.42 GB of weights)
        "RobertaForSequenceClassification", num_labels=3, vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
        num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1),
    "dinalzein/xlm-roberta-base-finetuned-language-identification": _arch(  # XLM-R base, 20 labels (assumed)
        "XLMRobertaForSequenceClassification", num_labels=20, vocab_size=250002, **_ROBERTA_BASE),
    "Helsinki-NLP/opus-mt-fr-en": _arch(
        "MarianMTModel", d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, vocab_size=59514,
        activation_function="swish", max_position_embeddings=512, scale_embedding=True,
        pad_token_id=59513, decoder_start_token_id=59513, eos_token_id=0),
    "Helsinki-NLP/opus-mt-tc-big-fr-en": _arch(
        "MarianMTModel", d_model=1024, encoder_layers=6, decoder_layers=6, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, vocab_size=53017,
        activation_function="relu", max_position_embeddings=1024, share_encoder_decoder_embeddings=True,
        pad_token_id=53016, decoder_start_token_id=53016),
} | {
    f"sshleifer/distilbart-xsum-{e}-{d}": _arch("BartForConditionalGeneration", encoder_layers=e, decoder_layers=d,
                                                **_BART)
    for e, d in ((1, 1), (12, 1), (6, 6), (12, 3), (9, 6), (12, 6))
}


def architecture(variant: VariantSpec) -> ArchitectureSpec:
    """The spec's architecture if it gives one, else the zoo's entry for the variant's name."""
    if variant.architecture:
        return variant.architecture
    if variant.name in ARCHITECTURES:
        return ARCHITECTURES[variant.name]
    raise ConfigError(f"variant '{variant.name}' has no architecture: give it one in the pipeline spec "
                      "(architecture: {model_class: ..., config: {...}}) or use one of the zoo's: "
                      + ", ".join(sorted(ARCHITECTURES)))


def build_module(variant: VariantSpec, weights: str | Path | None = None):
    """The architecture with random weights, or with a state dict (`weights`, a file saved with torch.save)."""
    import transformers

    arch = architecture(variant)
    cls = getattr(transformers, arch.model_class, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ConfigError(f"variant '{variant.name}': '{arch.model_class}' is not a transformers model class")
    try:
        config = cls.config_class(**arch.config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"variant '{variant.name}': config of {arch.model_class} rejected: {e}") from None
    module = cls(config)
    if weights:
        import torch

        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return module


# The class a checkpoint folder is loaded with, by stage kind (its config.json says which architecture)
AUTO_CLASSES = {"speech-recognition": "AutoModelForSpeechSeq2Seq", "question-answering": "AutoModelForQuestionAnswering",
                "text-classification": "AutoModelForSequenceClassification", "translation": "AutoModelForSeq2SeqLM",
                "summarization": "AutoModelForSeq2SeqLM"}


def load_checkpoint(variant: VariantSpec, kind: str, folder: Path):
    """A `save_pretrained` folder: the model (the spec's class if it names one, else the kind's Auto class) and its
    own preprocessing (tokenizer; feature extractor too for speech). A missing file is a clear error."""
    import transformers

    if not (folder / "config.json").is_file():
        raise ConfigError(f"variant '{variant.name}': {folder} is not a transformers checkpoint folder (no config.json)")
    cls = getattr(transformers, variant.architecture.model_class if variant.architecture else AUTO_CLASSES[kind])
    try:
        module = cls.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"variant '{variant.name}': cannot load the checkpoint in {folder} as {cls.__name__}: {e}") from None
    tokenizer = _local(transformers.AutoTokenizer, folder, variant, "tokenizer", "tokenizer.save_pretrained",
                       TOKENIZER_FILES)
    if len(tokenizer) > module.config.vocab_size:
        raise ConfigError(f"variant '{variant.name}': the tokenizer in {folder} has {len(tokenizer)} tokens but the "
                          f"model embeds {module.config.vocab_size}: they are not one checkpoint's")
    features = None
    if kind == "speech-recognition":
        features = _local(transformers.AutoFeatureExtractor, folder, variant, "feature extractor",
                          "feature_extractor.save_pretrained", ("preprocessor_config.json",))
    return module, CheckpointPreprocessing(tokenizer, features)


# What save_pretrained writes for a tokenizer (one is enough); transformers builds an empty tokenizer without them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "source.spm", "merges.txt")


def _local(auto, folder: Path, variant: VariantSpec, what: str, how: str, files: tuple[str, ...]):
    try:
        if not any((folder / f).is_file() for f in files):
            raise OSError(f"none of {', '.join(files)}")
        return auto.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"variant '{variant.name}': the checkpoint in {folder} has no usable {what} ({e}); save it "
                          f"beside the model ({how}({folder}))") from None


_WORD = re.compile(r"\w+|[^\w\s]")


@cache
def _decode_words() -> tuple[str, ...]:
    from ipa.models.corpus import ENGLISH

    return tuple(sorted({w.lower() for t in ENGLISH for w in re.findall(r"[A-Za-z]+", t)}))


@dataclass(frozen=True)
class WordTokenizer:
    """Words and marks (long words in pieces of six characters) hashed into ids in [4, vocab_size - 1): the
    first four and the last id are where these models keep their special tokens (start, end, padding)."""

    vocab_size: int
    first: int = 4

    def pieces(self, text: str) -> list[tuple[int, str]]:
        """(word index, piece) of every piece, in order."""
        out = []
        for i, w in enumerate(_WORD.findall(text)):
            out += [(i, w[k:k + 6]) for k in range(0, len(w), 6)]
        return out

    def ids(self, pieces: list[tuple[int, str]]) -> list[int]:
        span = self.vocab_size - 1 - self.first
        return [self.first + zlib.crc32(p.lower().encode()) % span for _, p in pieces]

    def decode(self, ids) -> str:
        words = _decode_words()
        return " ".join(words[int(i) % len(words)] for i in ids)



@dataclass
class Encoded:
    """A batch ready for the model; for question answering, where each row's context lies and how tokens a..b of
    row i read as text."""

    tensors: dict[str, Any]
    spans: list[tuple[int, int]] = field(default_factory=list)
    span_text: list[Callable[[int, int], str]] = field(default_factory=list)


@dataclass
class SyntheticPreprocessing:
    """Random weights: words hashed into the vocabulary, log-mel features in numpy, generation of exactly the cap."""

    tokenizer: WordTokenizer
    special: dict[str, int]
    name: str = "synthetic"

    def speech(self, items: list[np.ndarray]) -> dict[str, Any]:
        import torch

        from ipa.models.audio import log_mel

        feats = [log_mel(a) for a in items]
        n = max(len(f) for f in feats)
        x = np.zeros((len(feats), n, feats[0].shape[1]), np.float32)
        mask = np.zeros((len(feats), n), np.int64)
        for i, f in enumerate(feats):
            x[i, : len(f)], mask[i, : len(f)] = f, 1
        return {"input_features": torch.from_numpy(x), "attention_mask": torch.from_numpy(mask)}

    def text(self, items: list[str]) -> Encoded:
        sp = self.special
        rows = [[sp["bos"]] + self.tokenizer.ids(self.tokenizer.pieces(t)) + [sp["eos"]] for t in items]
        return Encoded(self._padded([r[:MAX_TOKENS] for r in rows]))

    def question(self, items: list[str], context: str) -> Encoded:
        """The question, then the context (at most MAX_TOKENS in all); a span reads as the context's words."""
        sp, tok = self.special, self.tokenizer
        ctx = tok.pieces(context)
        words = _WORD.findall(context)
        rows, spans = [], []
        for text in items:
            ids = ([sp["bos"]] + tok.ids(tok.pieces(text)) + [sp["eos"]])[: MAX_TOKENS // 2] + [sp["eos"]]
            start = len(ids)
            ids = (ids + tok.ids(ctx))[: MAX_TOKENS - 1] + [sp["eos"]]
            rows.append(ids)
            spans.append((start, len(ids) - 1))

        def reader(start: int) -> Callable[[int, int], str]:
            return lambda a, b: " ".join(words[ctx[a - start][0]:ctx[b - start][0] + 1])

        return Encoded(self._padded(rows), spans, [reader(lo) for lo, _ in spans])

    def _padded(self, rows: list[list[int]]) -> dict[str, Any]:
        import torch

        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.special["pad"], dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, rows, cap: int) -> list[str]:
        return [self.tokenizer.decode(row[-cap:].tolist()) for row in rows]

    def generation(self, cap: int) -> dict[str, Any]:
        """Exactly `cap` tokens, greedy: random weights would never end a generation by themselves."""
        return {"max_new_tokens": cap, "min_new_tokens": cap, "do_sample": False, "num_beams": 1}

    def label(self, config, index: int) -> int | str:
        return index


@dataclass
class CheckpointPreprocessing:
    """A checkpoint's own tokenizer (and feature extractor for speech), labels and generation settings."""

    tokenizer: Any
    features: Any = None
    name: str = "checkpoint"

    def speech(self, items: list[np.ndarray]) -> dict[str, Any]:
        out = self.features(items, sampling_rate=16_000, padding=True, return_attention_mask=True, return_tensors="pt")
        return {k: v for k, v in out.items() if k in ("input_features", "input_values", "attention_mask")}

    def text(self, items: list[str]) -> Encoded:
        return Encoded(dict(self.tokenizer(list(items), padding=True, truncation=True, max_length=self._max(),
                                           return_tensors="pt")))

    def question(self, items: list[str], context: str) -> Encoded:
        """The tokenizer's own question/context pairs; a span reads as the context's characters it covers."""
        tok = self.tokenizer
        enc = tok(list(items), [context] * len(items), truncation="only_second", max_length=self._max(),
                  padding=True, return_offsets_mapping=tok.is_fast, return_tensors="pt")
        offsets = enc.pop("offset_mapping", None)
        spans, readers = [], []
        for i in range(len(items)):
            seq = enc.sequence_ids(i) if tok.is_fast else None
            ctx = [j for j, s in enumerate(seq) if s == 1] if seq else list(range(enc["input_ids"].shape[1]))
            spans.append((ctx[0], ctx[-1] + 1) if ctx else (0, 0))
            readers.append(self._reader(enc["input_ids"][i], offsets[i] if offsets is not None else None, context))
        return Encoded(dict(enc), spans, readers)

    def _reader(self, ids, offsets, context: str) -> Callable[[int, int], str]:
        if offsets is None:
            return lambda a, b: self.tokenizer.decode(ids[a:b + 1], skip_special_tokens=True).strip()
        return lambda a, b: context[int(offsets[a][0]):int(offsets[b][1])]

    def _max(self) -> int:
        return min(MAX_TOKENS, int(getattr(self.tokenizer, "model_max_length", MAX_TOKENS) or MAX_TOKENS))

    def decode(self, rows, cap: int) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def generation(self, cap: int) -> dict[str, Any]:
        """The checkpoint's own generation settings, at most `cap` new tokens: a trained model ends by itself."""
        return {"max_new_tokens": cap}

    def label(self, config, index: int) -> int | str:
        return (getattr(config, "id2label", None) or {}).get(index, index)


Preprocessing = SyntheticPreprocessing | CheckpointPreprocessing
OUTPUT_KEY = {"speech-recognition": "transcript", "translation": "translation", "summarization": "summary"}


@dataclass
class TextModel:
    """A speech or text variant as the builder protocol's batch callable: raw samples or strings in, one answer
    each out (with the text it gives the next stage, and which preprocessing it had)."""

    name: str
    kind: str
    module: Any
    device: str
    preprocessing: Preprocessing
    max_new_tokens: int | None
    context: str = ""  # question answering: the fixed context the question is asked of

    def __post_init__(self) -> None:
        import inspect

        self._accepts = set(inspect.signature(self.module.forward).parameters)

    def __call__(self, items: list[Any]) -> list[dict[str, Any]]:
        import torch

        pre = self.preprocessing
        with torch.inference_mode():
            if self.kind == "speech-recognition":
                out = self._generate(pre.speech(items))
            elif self.kind == "question-answering":
                enc = pre.question(items, self.context)
                logits = self.module(**self._inputs(enc.tensors))
                out = self._answers(enc, logits.start_logits, logits.end_logits)
            elif self.kind in OUTPUT_KEY:
                out = self._generate(pre.text(items).tensors)
            else:
                probs = self.module(**self._inputs(pre.text(items).tensors)).logits.softmax(-1).cpu()
                score, label = probs.max(-1)
                out = [{"label": pre.label(self.module.config, int(c)), "score": round(float(s), 4), "text": t}
                       for c, s, t in zip(label, score, items)]
        return [o | {"preprocessing": pre.name} for o in out]

    def _inputs(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) for k, v in tensors.items() if k in self._accepts}

    def _generate(self, tensors: dict[str, Any]) -> list[dict[str, Any]]:
        cap = self.max_new_tokens or 1
        out = self.module.generate(**self._inputs(tensors), **self.preprocessing.generation(cap))
        texts = self.preprocessing.decode(out.cpu(), cap)
        return [{OUTPUT_KEY[self.kind]: t, "text": t} for t in texts]

    def _answers(self, enc: Encoded, start, end) -> list[dict[str, Any]]:
        """The best context span (start <= end, at most 30 tokens), as the text it covers."""
        import torch

        out = []
        for i, (lo, hi) in enumerate(enc.spans):
            s, e = start[i, lo:hi].float().cpu(), end[i, lo:hi].float().cpu()
            n = len(s)
            if n == 0:
                out.append({"answer": "", "score": 0.0, "text": ""})
                continue
            ones = torch.ones((n, n), dtype=torch.bool)
            valid = torch.triu(ones) & ~torch.triu(ones, diagonal=MAX_ANSWER_TOKENS)
            scores = (s[:, None] + e[None, :]).masked_fill(~valid, float("-inf"))
            a, b = divmod(int(scores.argmax()), n)
            answer = enc.span_text[i](lo + a, lo + b)
            prob = float(s.softmax(0)[a] * e.softmax(0)[b])
            out.append({"answer": answer, "score": round(prob, 4), "text": answer})
        return out


def build(variant: VariantSpec, stage: StageSpec, weights: str | Path | None = None, device: str = "cpu") -> TextModel:
    """The variant of a speech or text stage, ready to serve: from a checkpoint folder with its own preprocessing,
    else the architecture (random weights, or a state dict) with the synthetic one."""
    from ipa.models.corpus import QA_CONTEXT

    kind = stage.kind or ""
    if weights and Path(weights).is_dir():
        module, pre = load_checkpoint(variant, kind, Path(weights))
    else:
        module = build_module(variant, weights)
        pre = SyntheticPreprocessing(WordTokenizer(int(module.config.vocab_size)), _special_tokens(module.config))
        if weights:
            log.warning("variant %s: a state dict brings no tokenizer or feature extractor, so its inputs are "
                        "preprocessed synthetically; save a transformers folder (save_pretrained, with the "
                        "tokenizer) for the checkpoint's own", variant.name)
    return TextModel(variant.name, kind, module.eval().to(device), device, pre, stage.max_new_tokens,
                     context=QA_CONTEXT)


def _special_tokens(cfg) -> dict[str, int]:
    def token(name: str, default: int) -> int:  # BERT's configs name no start or end token
        value = getattr(cfg, f"{name}_token_id", None)
        return int(value) if value is not None else default

    return {"bos": token("bos", 1), "eos": token("eos", 2), "pad": token("pad", 0)}
