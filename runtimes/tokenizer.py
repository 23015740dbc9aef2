"""Prompt -> token ids without transformers: a `tokenizers` JSON plus the manifest's ids.

Special tokens are added here, not by the JSON's post-processor, so every artifact pads the
same way whatever its tokenizer file declares: `[bos] ids[:max_length - specials] eos pad...`,
exactly `max_length` ids, as CLIPTokenizer (bos and eos) and T5TokenizerFast (eos only) do with
`padding="max_length", truncation=True`. The exporter checks this rule against the pipeline's own
tokenizer on the golden prompts (qsched_export/export/tokenizer_files.py), using `pad_row` below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.manifest import ArtifactError, TokenizerSpec


def pad_row(body: list[int], spec: TokenizerSpec) -> list[int]:
    """One prompt's ids: the body (ids without special tokens) cut to fit, wrapped and padded."""
    head = [] if spec.bos_id is None else [spec.bos_id]
    row = head + body[: spec.max_length - len(head) - 1] + [spec.eos_id]
    return row + [spec.pad_id] * (spec.max_length - len(row))


class PromptTokenizer:
    def __init__(self, artifact_dir: str | Path, spec: TokenizerSpec):
        from tokenizers import Tokenizer

        path = Path(artifact_dir) / spec.dir / spec.file
        if not path.is_file():
            raise ArtifactError(f"tokenizer file {path} is missing", "copy the whole artifact folder, or re-export it")
        specials = 1 if spec.bos_id is None else 2
        if spec.max_length < specials:
            raise ArtifactError(f"tokenizer max_length {spec.max_length} leaves no room for its special tokens", "re-export the artifact")
        self.spec = spec
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ArtifactError(f"tokenizer file {path} cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                "copy the whole artifact folder again, or re-export it") from None

    def _bodies(self, prompts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(prompts), add_special_tokens=False)]

    def ids(self, prompts: list[str]) -> np.ndarray:
        """`(len(prompts), max_length)` int64 ids."""
        rows = [pad_row(body, self.spec) for body in self._bodies(prompts)]
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.spec.max_length)

    def dropped(self, prompts: list[str]) -> list[int]:
        """How many tokens of each prompt do not fit `max_length` and are cut."""
        room = self.spec.max_length - (1 if self.spec.bos_id is None else 2)
        return [max(0, len(body) - room) for body in self._bodies(prompts)]
