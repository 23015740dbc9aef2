"""The artifact's tokenizers: one `tokenizers` JSON per pipeline tokenizer, which the torch-free
runtime loads with `tokenizers.Tokenizer.from_file`, plus the ids the manifest records.

The runtime encodes without special tokens and adds them itself (`runtimes.tokenizer.pad_row`).
So each JSON is saved with padding and truncation off, and the export checks that the runtime's
rule reproduces the pipeline's own tokenizer ids for the golden prompts, so the two cannot
silently disagree (SDXL's second tokenizer pads with id 0, T5 has no bos: the spec says so).
"""

from __future__ import annotations

import copy
from pathlib import Path

from qsched_export.errors import QSchedError
from runtimes.manifest import TokenizerSpec
from runtimes.tokenizer import pad_row

TOKENIZER_FILE = "tokenizer.json"


def _special_ids(tok) -> tuple[int | None, int]:
    """(bos, eos) as the tokenizer wraps a sequence: CLIP adds both, T5 only eos."""
    specials = tok("", padding=False, truncation=False).input_ids  # the wrapping of an empty text
    if len(specials) == 2:
        return int(specials[0]), int(specials[1])
    if len(specials) == 1:
        return None, int(specials[0])
    raise QSchedError(f"{type(tok).__name__} wraps a sequence in {len(specials)} special tokens",
                      "only tokenizers adding [bos] ... eos are supported by the runtime; report it")


def write_tokenizers(backbone, artifact_dir: Path, check_texts: list[str]) -> tuple[TokenizerSpec, ...]:
    """Write each tokenizer of `backbone` under `artifact_dir/<attr>/` and return their specs."""
    expected = backbone.token_ids(check_texts)
    specs = []
    for role in backbone.tokenizer_roles():
        tok = getattr(backbone.pipe, role.attr)
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            from transformers.convert_slow_tokenizer import convert_slow_tokenizer

            backend = convert_slow_tokenizer(tok)
        backend = copy.deepcopy(backend)
        backend.no_padding()
        backend.no_truncation()
        folder = artifact_dir / role.attr
        folder.mkdir()
        backend.save(str(folder / TOKENIZER_FILE))
        bos, eos = _special_ids(tok)
        spec = TokenizerSpec(role.attr, role.input_name, role.attr, TOKENIZER_FILE, role.max_length, int(tok.pad_token_id), bos, eos)
        ours = [pad_row(e.ids, spec) for e in backend.encode_batch(check_texts, add_special_tokens=False)]
        if ours != expected[role.input_name].tolist():
            raise QSchedError(f"the exported {role.attr} does not reproduce {type(tok).__name__}'s ids",
                              "this tokenizer is not supported by the runtime's [bos] ... eos pad rule; report it")
        specs.append(spec)
    return tuple(specs)
