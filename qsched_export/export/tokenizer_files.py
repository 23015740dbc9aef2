"""The artifact's tokenizer: one `tokenizers` JSON the torch-free runtime loads with
`tokenizers.Tokenizer.from_file`, plus the ids the manifest records.

The runtime (`runtimes/tokenizer.py`) encodes without special tokens and adds them itself:
`bos ids[:max_length-2] eos pad...`. So the JSON is saved with padding and truncation off, and
the export checks that this rule reproduces the pipeline's own CLIPTokenizer ids for the golden
prompts, so the two cannot silently disagree.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from qsched_export.errors import QSchedError
from runtimes.manifest import TokenizerSpec

TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"


def pipeline_token_ids(pipe, texts: list[str]) -> torch.Tensor:
    """Ids as `StableDiffusionPipeline.encode_prompt` makes them (padding to max_length, truncation)."""
    tok = pipe.tokenizer
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


def write_tokenizer(pipe, artifact_dir: Path, check_texts: list[str]) -> TokenizerSpec:
    tok = pipe.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        from transformers.convert_slow_tokenizer import convert_slow_tokenizer

        backend = convert_slow_tokenizer(tok)
    backend = copy.deepcopy(backend)
    backend.no_padding()
    backend.no_truncation()
    folder = artifact_dir / TOKENIZER_DIR
    folder.mkdir()
    backend.save(str(folder / TOKENIZER_FILE))
    spec = TokenizerSpec(TOKENIZER_DIR, TOKENIZER_FILE, int(tok.model_max_length), int(tok.pad_token_id),
                         int(tok.bos_token_id), int(tok.eos_token_id))
    expected = pipeline_token_ids(pipe, check_texts).tolist()
    if runtime_token_ids(backend, spec, check_texts) != expected:
        raise QSchedError(f"the exported tokenizer does not reproduce {type(tok).__name__}'s ids",
                          "this tokenizer is not supported by the runtime's bos/eos/pad rule; report it")
    return spec


def runtime_token_ids(backend, spec: TokenizerSpec, texts: list[str]) -> list[list[int]]:
    """The runtime's rule (runtimes/tokenizer.py), applied with the `tokenizers` backend."""
    rows = []
    for enc in backend.encode_batch(texts, add_special_tokens=False):
        row = [spec.bos_id, *enc.ids[: spec.max_length - 2], spec.eos_id]
        rows.append(row + [spec.pad_id] * (spec.max_length - len(row)))
    return rows
