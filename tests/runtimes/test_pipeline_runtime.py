"""The torch-free pipeline on the hand-made artifact: tokenizer ids, parity, PNG, runner errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hand_artifact import L, PROMPTS
from PIL import Image

from runtimes.errors import RunnerError
from runtimes.manifest import ArtifactError, load_manifest
from runtimes.parity import PARITY_FILE, ParityError, check_artifact
from runtimes.pipeline import Text2ImagePipeline, save_png
from runtimes.runners import OrtRunner, resolve_providers
from runtimes.tokenizer import PromptTokenizer


def test_tokenizer_ids_equal_clip_tokenizer(tmp_path, hand_artifact):
    from qsched_export.testing import write_clip_tokenizer
    from transformers import CLIPTokenizer

    write_clip_tokenizer(tmp_path, max_length=L)
    slow = CLIPTokenizer.from_pretrained(tmp_path)
    texts = ["", "a red circle", "Two  SMALL blue squares, on a green background!!", "x" * 40]
    expected = slow(texts, padding="max_length", max_length=L, truncation=True).input_ids
    ids = PromptTokenizer(hand_artifact, load_manifest(hand_artifact).tokenizers[0]).ids(texts)
    assert ids.dtype == np.int64 and ids.tolist() == expected


def test_golden_ids_and_parity(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    pipe = Text2ImagePipeline(art)
    golden = np.load(art / "golden.npz")
    assert np.array_equal(pipe.input_ids(PROMPTS)["input_ids"], golden["input_ids"])  # the positive prompt: the negative one is baked in
    report = check_artifact(art)
    assert report.passed and report.summary == "PASSED | onnxruntime (CPUExecutionProvider)"
    fq = {c.reference: c.stats for c in report.comparisons if c.output == "final_latents"}
    assert fq["fakequant"].max_abs == 0.0 and 0.999 < fq["fp32"].cosine < 1.0
    assert (art / PARITY_FILE).is_file()


def test_parity_failure_is_raised_with_every_output(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    golden = dict(np.load(art / "golden.npz"))
    golden["fakequant/final_latents"] = golden["fakequant/final_latents"] * -1
    golden["fakequant/image"] = 1 - golden["fakequant/image"]
    np.savez(art / "golden.npz", **golden)
    manifest = load_manifest(art, verify=False)
    from runtimes.manifest import write_manifest

    write_manifest(art, manifest)
    with pytest.raises(ParityError) as info:
        check_artifact(art)
    assert "final_latents vs fakequant" in info.value.problem and "image vs fakequant" in info.value.problem
    assert info.value.report.summary.startswith("FAILED | onnxruntime")


def test_seeded_run_writes_png(hand_artifact, tmp_path):
    pipe = Text2ImagePipeline(hand_artifact)
    a, b = pipe(PROMPTS, seed=7), pipe(PROMPTS, seed=7)
    assert np.array_equal(a.image, b.image) and not np.array_equal(a.image, pipe(PROMPTS, seed=8).image)
    path = save_png(a.image[0], tmp_path / "img" / "x.png")
    with Image.open(path) as img:
        assert img.size == (8, 8) and img.mode == "RGB"
    assert list((tmp_path / "img").iterdir()) == [path]  # no temp file left


def test_batch_mismatch_is_an_artifact_error(hand_artifact):
    with pytest.raises(ArtifactError, match="batch 1"):
        Text2ImagePipeline(hand_artifact).input_ids(["a", "b"])


def test_unavailable_provider_names_the_available_ones(hand_artifact):
    with pytest.raises(RunnerError) as info:
        OrtRunner(hand_artifact / "denoise.onnx", ["cuda"])
    assert "CUDAExecutionProvider is not available" in info.value.problem and "CPUExecutionProvider" in info.value.problem
    assert resolve_providers(["cpu"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_wrong_feeds_are_named(hand_artifact):
    runner = OrtRunner(hand_artifact / "vae_decoder.onnx")
    with pytest.raises(RunnerError, match=r"missing \['final_latents'\], unexpected \['x'\]"):
        runner.run({"x": np.zeros((1, 4, 4, 4), np.float32)})


def test_tampered_file_is_refused(hand_artifact, tmp_path):
    art = shutil.copytree(hand_artifact, tmp_path / "a")
    (art / "golden.npz").write_bytes((art / "golden.npz").read_bytes() + b"x")
    with pytest.raises(ArtifactError, match="sha256 mismatch: golden.npz"):
        Text2ImagePipeline(art)


def test_provider_dropped_by_the_session_is_refused(hand_artifact, monkeypatch):
    # onnxruntime-gpu without a GPU: CUDA is "available" but the session silently runs on the CPU.
    import onnxruntime as ort

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", lambda path, sess_options, providers: real(path, sess_options=sess_options, providers=["CPUExecutionProvider"]))
    with pytest.raises(RunnerError, match="could not start CUDAExecutionProvider"):
        OrtRunner(hand_artifact / "denoise.onnx", ["cuda"])
