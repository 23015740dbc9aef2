"""runtimes/manifest.py: the artifact contract round-trips, and readers refuse unknown versions and tampered files."""

from __future__ import annotations

import json

import pytest

from runtimes.manifest import SCHEMA_VERSION, ArtifactError, GraphSpec, ImageSpec, Manifest, TensorSpec, TokenizerSpec, load_manifest, write_manifest
from runtimes.schemes import SCHEMES


def _manifest() -> Manifest:
    return Manifest(
        tools={"qsched_export": "0.1.0"}, model={"id": "m", "pipeline_class": "StableDiffusionPipeline", "backbone": "sd", "family": "lcm"},
        sampler={"family": "lcm", "timesteps": [999.0, 499.0]}, steps=2, guidance_scale=2.0, do_cfg=True,
        scheme=SCHEMES["w8a8"].to_dict(), target_form="qdq", coefficients={"latent_coeff": [0.9, 1.0], "output_coeff": [1.1, 1.0]},
        image=ImageSpec(64, 64, 1), latent_shape=(1, 4, 8, 8), opset=20,
        graphs={"denoise": GraphSpec("denoise.onnx", {"latents": TensorSpec((1, 4, 8, 8), "float32")}, {"final_latents": TensorSpec((1, 4, 8, 8), "float32")})},
        tokenizers=(TokenizerSpec("tokenizer", "input_ids", "tokenizer", "tokenizer.json", 77, 49407, 49406, 49407),
                    TokenizerSpec("tokenizer_2", "input_ids_2", "tokenizer_2", "tokenizer.json", 32, 0, None, 1)),
    )


def test_round_trip_and_hashes(tmp_path):
    (tmp_path / "denoise.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    written = write_manifest(tmp_path, _manifest())
    assert set(written.files) == {"denoise.onnx", "tokenizer/tokenizer.json"}
    loaded = load_manifest(tmp_path)
    assert loaded == written and loaded.schema_version == SCHEMA_VERSION
    assert loaded.graph("denoise").inputs["latents"].shape == (1, 4, 8, 8)
    with pytest.raises(ArtifactError, match="no text_encoder graph"):
        loaded.graph("text_encoder")


def test_tampered_or_missing_file_is_named(tmp_path):
    (tmp_path / "denoise.onnx").write_bytes(b"graph")
    (tmp_path / "golden.npz").write_bytes(b"golden")
    write_manifest(tmp_path, _manifest())
    (tmp_path / "denoise.onnx").write_bytes(b"other")
    (tmp_path / "golden.npz").unlink()
    with pytest.raises(ArtifactError, match=r"missing: golden.npz; sha256 mismatch: denoise.onnx"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path, verify=False).steps == 2


def test_unknown_schema_version_is_refused(tmp_path):
    write_manifest(tmp_path, _manifest())
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema_version 99 is not supported"):
        load_manifest(tmp_path)


def test_missing_or_malformed_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(ArtifactError, match="malformed"):
        load_manifest(tmp_path)
