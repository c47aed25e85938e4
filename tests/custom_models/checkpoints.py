"""Real `transformers` checkpoint folders made offline: a tiny model with random weights and a tokenizer trained
here with `tokenizers`, saved with `save_pretrained` as a fine-tuned model would be."""

from __future__ import annotations

from pathlib import Path

TEXTS = ["the service was great and the food was good", "terrible slow service, never again",
         "good food and a friendly welcome", "the room was cold and the staff were rude"]


def tokenizer(special: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=list(special)))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", model_max_length=128)


def text_classifier(folder: Path) -> Path:
    """A sentiment classifier (DistilBERT, one layer of 16 dims) with labels negative/positive."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tok = tokenizer()
    config = DistilBertConfig(vocab_size=len(tok), dim=16, n_layers=1, n_heads=2, hidden_dim=32, num_labels=2,
                              id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                              pad_token_id=tok.pad_token_id)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def question_answerer(folder: Path) -> Path:
    from transformers import BertConfig, BertForQuestionAnswering

    tok = tokenizer()
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, pad_token_id=tok.pad_token_id)
    BertForQuestionAnswering(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def speech_recognizer(folder: Path) -> Path:
    """Speech2Text with its feature extractor (80 log-mel bins, computed by transformers in numpy)."""
    from transformers import Speech2TextConfig, Speech2TextFeatureExtractor, Speech2TextForConditionalGeneration

    tok = tokenizer(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"))
    config = Speech2TextConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                               decoder_ffn_dim=32, conv_channels=16, input_feat_per_channel=80,
                               max_source_positions=1000, pad_token_id=tok.pad_token_id,
                               bos_token_id=tok.convert_tokens_to_ids("<s>"), eos_token_id=tok.convert_tokens_to_ids("</s>"),
                               decoder_start_token_id=tok.convert_tokens_to_ids("<s>"))
    Speech2TextForConditionalGeneration(config).save_pretrained(folder)
    Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
