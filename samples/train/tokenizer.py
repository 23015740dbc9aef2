"""A tiny CLIP BPE tokenizer whose merges turn every grammar word into one token.

CLIP's BPE keeps the 512 byte-level symbols (with and without the end-of-word marker) so any
text still tokenizes; merges are added word by word until each grammar word is one symbol.
vocab.json/merges.txt and tokenizer.json are saved side by side so both
``CLIPTokenizer.from_pretrained`` and a torch-free ``tokenizers.Tokenizer.from_file`` load it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's merge loop: repeatedly merge the lowest-ranked adjacent pair."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get(p, float("inf")), i) for i, p in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == float("inf"):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        chars = tuple(word[:-1]) + (word[-1] + "</w>",)
        # Appending merges never changes words already done: their own merges rank lower.
        while len(parts := _bpe(chars, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab_list.append(pair[0] + pair[1])
    vocab_list += [BOS, EOS]
    return {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}, merges


def save_tokenizer(words: list[str], out_dir: str | Path, max_length: int) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and tokenizer.json; verify every loader gives the same ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(words)
    (out_dir / "vocab.json").write_text(json.dumps(vocab))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length).save_pretrained(out_dir)
    tok = CLIPTokenizer.from_pretrained(out_dir)
    raw = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    for word in words:
        if len(tok.tokenize(word)) != 1:
            raise RuntimeError(f"grammar word {word!r} is not a single token")
    chunks = [" ".join(words[i:i + max_length - 2]) for i in range(0, len(words), max_length - 2)]
    for text in (*chunks, "", "A red circle, in the top-left!"):
        ids = tok(text).input_ids
        if ids != raw.encode(text).ids or len(ids) > max_length:
            raise RuntimeError(f"tokenizer.json and CLIPTokenizer disagree on {text!r}")
    return tok
