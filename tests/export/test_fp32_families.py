"""FP32 ONNX on ONNX Runtime CPU reproduces the PyTorch Q-Sched sampler, for every family."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from export_cases import FAMILIES, STEPS
from helpers import error_stats, run_artifact

from runtimes.manifest import load_manifest


# tcd_det (deterministic: no noise input) is exported fused, in test_fused_pipeline_matches.
SEPARATE = [f for f in FAMILIES if f != "tcd_det"]


@pytest.mark.parametrize("family", SEPARATE)
def test_fp32_matches_pytorch_sampler(artifact, family):
    folder = artifact(family, "fp32")
    out = run_artifact(folder)
    golden = out["golden"]
    latents = error_stats(out["final_latents"], golden["fp32/final_latents"])
    print(family, "final latents vs PyTorch:", latents)
    assert latents["max"] <= 1e-4
    assert np.abs(out["first_latents"] - golden["fp32/first_latents"]).max() <= 1e-4
    assert not np.allclose(golden["fp32/first_latents"], golden["fp32/final_latents"], atol=1e-2)  # step 1 is not the end
    for name in load_manifest(folder).graph("text_encoder").outputs:  # the conditioning, by name
        assert np.abs(out[name] - golden[name]).max() <= 1e-5, name
    assert np.abs(out["image"] - golden["fp32/image"]).max() <= 1e-4
    # the golden latent is not trivially zero: the graph really ran the sampler
    assert np.abs(golden["fp32/final_latents"]).max() > 0.1


@pytest.mark.parametrize("family", SEPARATE)
def test_manifest_describes_the_graphs(artifact, calibrated, family):
    from qsched_export.qsched_file import read_qsched

    folder = artifact(family, "fp32")
    manifest = load_manifest(folder)
    qfile = read_qsched(calibrated(family)[1])
    backbone, components, gamma, guidance = FAMILIES[family]
    expected_family = {"LCMScheduler": "lcm", "TCDScheduler": "tcd", "EulerAncestralDiscreteScheduler": "euler_a"}.get(
        components.get("scheduler_cls"), "flow_euler")
    assert manifest.steps == STEPS and manifest.sampler["family"] == manifest.family == expected_family
    assert manifest.backbone == backbone and manifest.guidance_scale == guidance
    assert manifest.target_form == "fp32" and manifest.scheme["name"] == "fp32"
    assert manifest.coefficients == qfile.scheme("fp32").coefficients.to_dict()
    assert manifest.do_cfg == (backbone != "flux" and "time_cond_proj_dim" not in components and guidance > 1)
    denoise = manifest.graph("denoise")
    noise_steps = sum(manifest.sampler["noise_steps"])
    assert ("noise" in denoise.inputs) == (noise_steps > 0)
    if noise_steps:
        assert denoise.inputs["noise"].shape == (noise_steps, *manifest.latent_shape)
    # The text graph encodes the positive prompts only: the negative one is baked into the denoise graph.
    text = manifest.graph("text_encoder")
    assert {t.input: t.max_length for t in manifest.tokenizers} == {name: spec.shape[1] for name, spec in text.inputs.items()}
    assert all(spec.shape[0] == 1 for spec in text.inputs.values())
    assert manifest.graph("vae_decoder").outputs["image"].shape == (1, 3, manifest.image.height, manifest.image.width)
    tokenizer_files = {f"{t.dir}/{t.file}" for t in manifest.tokenizers}
    assert set(manifest.files) == {"text_encoder.onnx", "denoise.onnx", "vae_decoder.onnx", "golden.npz"} | tokenizer_files
    assert len(tokenizer_files) == {"sd": 1, "sdxl": 2, "flux": 2}[backbone]
    # Q-Sched coefficients and timesteps are baked in: the graph has no timestep input
    assert set(denoise.inputs) == set(text.outputs) | {"latents"} | ({"noise"} if noise_steps else set())


def test_one_weight_copy_for_all_unrolled_steps(artifact, calibrated):
    """The unrolled graph's initializers hold the UNet weights once, not once per step."""
    from qsched_export.pipeline import load_pipeline

    folder = artifact("lcm", "fp32")
    model = onnx.load(str(folder / "denoise.onnx"))
    init_bytes = sum(np.prod(t.dims) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    unet = load_pipeline(str(calibrated("lcm")[0]))[0].unet
    param_bytes = sum(p.numel() * 4 for p in unet.parameters())
    assert STEPS >= 2
    assert init_bytes <= 1.05 * param_bytes, (init_bytes, param_bytes)


def test_fused_pipeline_through_the_cli(calibrated, tmp_path):
    """Deterministic TCD (gamma 0), fused, exported by the CLI: token ids + latents -> image, no noise input."""
    from typer.testing import CliRunner

    from qsched_export.cli import app

    model, qsched = calibrated("tcd_det")
    folder = tmp_path / "fused"
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--coeffs", str(qsched), "--steps", str(STEPS), "--gamma", "0",
                                      "--bits", "32", "--fuse", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert "scheme fp32 as fp32" in " ".join(result.output.split())
    manifest = load_manifest(folder)
    assert set(manifest.graphs) == {"pipeline"}
    assert not any(manifest.sampler["noise_steps"])
    assert set(manifest.graph("pipeline").inputs) == {"input_ids", "latents"}
    assert set(manifest.graph("pipeline").outputs) == {"image", "first_latents"}
    out = run_artifact(folder)
    assert np.abs(out["image"] - out["golden"]["fp32/image"]).max() <= 1e-4
    assert np.abs(out["first_latents"] - out["golden"]["fp32/first_latents"]).max() <= 1e-4


@pytest.mark.parametrize("family", ["lcm", "sdxl_cfg", "flux"])  # CLIP; CLIP + CLIP padded with "!"; CLIP + T5 (no bos)
def test_runtime_tokenizer_reproduces_golden_ids(artifact, family):
    from runtimes.tokenizer import PromptTokenizer

    from qsched_export.export.api import DEFAULT_PROMPT

    folder = artifact(family, "fp32")
    manifest = load_manifest(folder)
    golden = np.load(folder / "golden.npz")
    for spec in manifest.tokenizers:
        np.testing.assert_array_equal(PromptTokenizer(folder, spec).ids([DEFAULT_PROMPT]), golden[spec.input])
