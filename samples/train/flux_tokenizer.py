"""A tiny T5-style (Unigram, SentencePiece layout) tokenizer over the shapes grammar.

FLUX's second text encoder is T5; ours is a small T5 encoder trained from scratch, so it gets
its own vocabulary instead of T5's 32k pieces: T5's special tokens first (``<pad>`` = 0,
``</s>`` = 1, ``<unk>`` = 2), then one piece per grammar word (``▁circle``), then single
characters so that words outside the grammar still split into known pieces instead of ``<unk>``.

The backend is built here with ``tokenizers`` in exactly the layout that transformers'
``T5TokenizerFast`` rebuilds on load (whitespace split + ``▁`` metaspace, no normalizer,
``</s>`` appended by the post-processor), so ``T5TokenizerFast.from_pretrained(folder)`` and a
torch-free ``tokenizers.Tokenizer.from_file(folder / "tokenizer.json")`` give the same ids;
``save_t5_tokenizer`` checks that before it returns.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import Unigram

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPACE = "\u2581"  # SentencePiece's word-boundary marker
# Unigram picks the segmentation with the highest total score: a whole word (one piece at
# WORD_SCORE) always beats spelling it out (several pieces at CHAR_SCORE each).
WORD_SCORE, CHAR_SCORE = -1.0, -10.0
FALLBACK_CHARS = string.ascii_letters + string.digits + string.punctuation


def build_vocab(words: list[str]) -> list[tuple[str, float]]:
    """(piece, score) list: specials at T5's ids 0-2, grammar words, then the character fallback."""
    pieces = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    pieces += [(SPACE + w, WORD_SCORE) for w in words]
    pieces += [(SPACE, CHAR_SCORE)] + [(c, CHAR_SCORE) for c in FALLBACK_CHARS]
    seen: set[str] = set()
    out = []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            out.append((piece, score))
    return out


def build_t5_tokenizer(words: list[str]) -> Tokenizer:
    """The raw ``tokenizers`` backend (what tokenizer.json holds)."""
    vocab = build_vocab(words)
    tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    # T5 appends </s> to every sequence and adds no start token.
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", EOS], pair=["$A", EOS, "$B", EOS], special_tokens=[(EOS, 1)])
    return tok


def save_t5_tokenizer(words: list[str], out_dir: str | Path, max_length: int, check_texts: list[str] = ()):
    """Write tokenizer.json and tokenizer_config.json; return the loaded ``T5TokenizerFast``.

    Raises ``RuntimeError`` if a grammar word is not one piece, if ``T5TokenizerFast`` and the raw
    ``tokenizers`` file disagree on any id, or if one of ``check_texts`` (e.g. the training
    captions) needs more than ``max_length`` tokens.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = build_t5_tokenizer(words)
    raw.save(str(out_dir / "tokenizer.json"))
    # extra_ids=0: no <extra_id_N> sentinels (they exist for T5's span-corruption pre-training,
    # which this encoder never sees).
    config = {
        "tokenizer_class": "T5Tokenizer",
        "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "extra_ids": 0, "additional_special_tokens": [],
        "model_max_length": max_length,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    return check_t5_tokenizer(out_dir, words, max_length, check_texts)


def check_t5_tokenizer(folder: str | Path, words: list[str], max_length: int, check_texts: list[str] = ()):
    """Load ``folder`` with ``T5TokenizerFast`` and check it against the raw tokenizer.json and the
    builder: T5's special ids, one piece per grammar word, identical ids everywhere, captions
    within ``max_length``. Returns the tokenizer; raises ``RuntimeError`` naming the first problem."""
    from transformers import T5TokenizerFast

    folder = Path(folder)
    tok = T5TokenizerFast.from_pretrained(folder)
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    built = build_t5_tokenizer(words)
    if (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) != (0, 1, 2):
        raise RuntimeError(f"special ids are {(tok.pad_token_id, tok.eos_token_id, tok.unk_token_id)}, want (0, 1, 2)")
    for word in words:
        if len(tok.tokenize(word)) != 1:
            raise RuntimeError(f"grammar word {word!r} is not a single piece: {tok.tokenize(word)}")
    chunks = [" ".join(words[i:i + max_length - 1]) for i in range(0, len(words), max_length - 1)]
    for text in (*chunks, "", "A red circle, in the top-left!", "a zebra", *check_texts[:2000]):
        ids = tok(text).input_ids
        if ids != raw.encode(text).ids or ids != built.encode(text).ids:
            raise RuntimeError(f"T5TokenizerFast, tokenizer.json and the builder disagree on {text!r}")
    longest = max((len(ids) for ids in tok(list(check_texts)).input_ids), default=0) if check_texts else 0
    if longest > max_length:
        raise RuntimeError(f"a caption needs {longest} tokens, more than max_length {max_length}")
    return tok
