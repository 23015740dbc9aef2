"""Prompt -> token ids without transformers: a `tokenizers` JSON plus the manifest's ids.

Special tokens are added here, not by the JSON's post-processor, so every artifact pads the
same way whatever its tokenizer file declares: `bos ids[:max_length-2] eos pad...`, exactly
`max_length` ids, as CLIPTokenizer does with `padding="max_length", truncation=True`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.manifest import ArtifactError, TokenizerSpec


class PromptTokenizer:
    def __init__(self, artifact_dir: str | Path, spec: TokenizerSpec):
        from tokenizers import Tokenizer

        path = Path(artifact_dir) / spec.dir / spec.file
        if not path.is_file():
            raise ArtifactError(f"tokenizer file {path} is missing", "copy the whole artifact folder, or re-export it")
        if spec.max_length < 2:
            raise ArtifactError(f"tokenizer max_length {spec.max_length} leaves no room for bos and eos", "re-export the artifact")
        self.spec = spec
        self._tokenizer = Tokenizer.from_file(str(path))

    def ids(self, prompts: list[str]) -> np.ndarray:
        """`(len(prompts), max_length)` int64 ids."""
        spec = self.spec
        rows = []
        for encoding in self._tokenizer.encode_batch(list(prompts), add_special_tokens=False):
            body = encoding.ids[: spec.max_length - 2]
            row = [spec.bos_id, *body, spec.eos_id]
            rows.append(row + [spec.pad_id] * (spec.max_length - len(row)))
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), spec.max_length)
