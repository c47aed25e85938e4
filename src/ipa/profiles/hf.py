"""Speech and text variants: `transformers` architectures built from their published sizes, random weights.

The sizes are those of each model's published `config.json` (../shared/PIPELINES.md; "assumed" where the
model's own config was not confirmed). Nothing is downloaded: `Class(Config(**sizes))` gives the real
architecture and so the real compute; accuracy is the published figure, as for the vision variants.

Tokenizers: with random weights any vocabulary mapping is as good as the real one, and what costs is
the sequence length. Text is cut into words and marks, long words into pieces of at most six characters
(about what a subword tokenizer makes of plain text), each hashed into the variant's vocabulary;
generated ids decode to words of a fixed list, so downstream stages get real text of the capped length.
"""

from __future__ import annotations

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
    """The architecture with random weights, or a local checkpoint: a `transformers` folder
    (`DIR/<variant>/config.json` ...) or a state dict (`DIR/<variant>.pth`)."""
    import transformers

    arch = architecture(variant)
    cls = getattr(transformers, arch.model_class, None)
    if cls is None or not hasattr(cls, "config_class"):
        raise ConfigError(f"variant '{variant.name}': '{arch.model_class}' is not a transformers model class")
    if weights:
        folder = Path(weights) / variant.name
        if folder.is_dir():
            return cls.from_pretrained(folder, local_files_only=True)
    try:
        config = cls.config_class(**arch.config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"variant '{variant.name}': config of {arch.model_class} rejected: {e}") from None
    module = cls(config)
    if weights:
        import torch

        path = Path(weights)
        path = path / f"{variant.name}.pth" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"weights for '{variant.name}' not found at {path} (nor a transformers folder "
                              f"{Path(weights) / variant.name})")
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module


_WORD = re.compile(r"\w+|[^\w\s]")


@cache
def _decode_words() -> tuple[str, ...]:
    from ipa.profiles.corpus import ENGLISH

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
class TextModel:
    """A speech or text variant with the same face as `zoo.Model`: `inputs(batch)` (profiling, prepared
    outside the timed call), `__call__` on prepared inputs, `serve(items)` on raw ones."""

    name: str
    kind: str
    module: Any
    device: str
    tokenizer: WordTokenizer
    max_new_tokens: int | None
    samples: Callable[[int], list[Any]] | None = None
    context: str = ""  # question answering: the fixed context the question is asked of
    _special: dict[str, int] = field(default_factory=dict)

    def inputs(self, batch: int) -> dict[str, Any]:
        if self.samples is None:
            raise ConfigError(f"variant '{self.name}': no sample inputs (build it with the pipeline spec)")
        return self.prepare(self.samples(batch))

    def serve(self, items: list[Any]) -> list[dict[str, Any]]:
        return self(self.prepare(items))

    def warmup_item(self) -> Any:
        """A tiny input for the first call, which allocates (before a replica serves)."""
        return np.zeros(16_000, np.float32) if self.kind == "speech-recognition" else "warm up"

    def prepare(self, items: list[Any]) -> dict[str, Any]:
        if self.kind == "speech-recognition":
            return self._speech(items)
        return self._text(items)

    def __call__(self, x: dict[str, Any]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            if self.kind in ("speech-recognition", "translation", "summarization"):
                return self._generate(x)
            out = self.module(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
        if self.kind == "question-answering":
            return self._answers(x, out.start_logits, out.end_logits)
        probs = out.logits.softmax(-1).cpu()
        score, label = probs.max(-1)
        return [{"label": int(c), "score": round(float(s), 4), "text": t}
                for c, s, t in zip(label, score, x["texts"])]

    # -- inputs ----------------------------------------------------------------------------
    def _speech(self, items: list[np.ndarray]) -> dict[str, Any]:
        import torch

        from ipa.profiles.audio import log_mel

        feats = [log_mel(a) for a in items]
        n = max(len(f) for f in feats)
        x = np.zeros((len(feats), n, feats[0].shape[1]), np.float32)
        mask = np.zeros((len(feats), n), np.int64)
        for i, f in enumerate(feats):
            x[i, : len(f)], mask[i, : len(f)] = f, 1
        return {"input_features": torch.from_numpy(x).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device)}

    def _text(self, items: list[str]) -> dict[str, Any]:
        """Token ids (the question, then the context, for question answering), padded to the longest."""
        import torch

        sp = self._special
        rows, spans, words = [], [], []
        for text in items:
            pieces = self.tokenizer.pieces(text)
            ids = [sp["bos"]] + self.tokenizer.ids(pieces) + [sp["eos"]]
            span = (0, 0)
            if self.kind == "question-answering":
                ctx = self.tokenizer.pieces(self.context)
                ids = ids[:MAX_TOKENS // 2] + [sp["eos"]]
                start = len(ids)
                ids = (ids + self.tokenizer.ids(ctx))[: MAX_TOKENS - 1] + [sp["eos"]]
                span, pieces = (start, len(ids) - 1), ctx
            rows.append(ids[:MAX_TOKENS])
            spans.append(span)
            words.append((pieces, _WORD.findall(self.context if self.kind == "question-answering" else text)))
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), sp["pad"], dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device), "spans": spans,
                "words": words, "texts": list(items)}

    # -- outputs ---------------------------------------------------------------------------
    def _generate(self, x: dict[str, Any]) -> list[dict[str, Any]]:
        """Exactly `max_new_tokens` tokens, greedy: random weights would never end a generation by themselves."""
        cap = self.max_new_tokens
        args = {k: v for k, v in x.items() if k in ("input_ids", "input_features", "attention_mask")}
        out = self.module.generate(**args, max_new_tokens=cap, min_new_tokens=cap, do_sample=False, num_beams=1)
        key = {"speech-recognition": "transcript", "translation": "translation", "summarization": "summary"}[self.kind]
        texts = [self.tokenizer.decode(row[-cap:].tolist()) for row in out.cpu()]
        return [{key: t, "text": t} for t in texts]

    def _answers(self, x: dict[str, Any], start, end) -> list[dict[str, Any]]:
        """The best context span (start <= end, at most 30 tokens), as the words it covers."""
        import torch

        out = []
        for i, (lo, hi) in enumerate(x["spans"]):
            s, e = start[i, lo:hi].float().cpu(), end[i, lo:hi].float().cpu()
            n = len(s)
            ones = torch.ones((n, n), dtype=torch.bool)
            valid = torch.triu(ones) & ~torch.triu(ones, diagonal=MAX_ANSWER_TOKENS)
            scores = (s[:, None] + e[None, :]).masked_fill(~valid, float("-inf"))
            flat = int(scores.argmax())
            a, b = divmod(flat, n)
            pieces, words = x["words"][i]
            first, last = pieces[a][0], pieces[b][0]
            answer = " ".join(words[first:last + 1])
            prob = float((s.softmax(0)[a] * e.softmax(0)[b]))
            out.append({"answer": answer, "score": round(prob, 4), "text": answer})
        return out


def build(variant: VariantSpec, stage: StageSpec, weights: str | Path | None = None, device: str = "cpu") -> TextModel:
    """The variant of a speech or text stage, ready to run: module in eval mode on `device`, tokenizer, caps."""
    from ipa.profiles.corpus import QA_CONTEXT

    module = build_module(variant, weights).eval().to(device)
    cfg = module.config

    def token(name: str, default: int) -> int:  # BERT's configs name no start or end token
        value = getattr(cfg, f"{name}_token_id", None)
        return int(value) if value is not None else default

    special = {"bos": token("bos", 1), "eos": token("eos", 2), "pad": token("pad", 0)}
    return TextModel(variant.name, stage.kind or "", module, device, WordTokenizer(int(cfg.vocab_size)),
                     stage.max_new_tokens, context=QA_CONTEXT, _special=special)
