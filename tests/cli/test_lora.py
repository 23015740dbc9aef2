"""`--lora`: a LoRA made in the test is fused into the weights as diffusers fuses it, recorded in
qsched.json and the manifest, and bad LoRAs or mismatched calibrations are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qsched_export.cli import app
from qsched_export.errors import QSchedError
from qsched_export.lora import LoraSpec, parse_lora
from qsched_export.pipeline import generate, open_backbone

runner = CliRunner()
PROMPT = "a red circle"


def _make_lora(model: Path, folder: Path, targets=("to_q", "to_k", "to_v", "to_out.0"), seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model)
    torch.manual_seed(seed)
    # init_lora_weights=False: random B as well as A, so the LoRA changes the output.
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=list(targets), init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora(tiny_sd_dir, tmp_path_factory) -> Path:
    return _make_lora(tiny_sd_dir, tmp_path_factory.mktemp("lora"))


def _stock_latents(model: Path, lora: Path, scale: float, fuse: bool) -> torch.Tensor:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    extra = {}
    if fuse:
        pipe.fuse_lora(lora_scale=scale)
    else:
        extra["cross_attention_kwargs"] = {"scale": scale}
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(3), output_type="latent", **extra).images


def test_fused_lora_gives_diffusers_fused_pipeline(tiny_sd_dir, lora):
    backbone = open_backbone(str(tiny_sd_dir), loras=(LoraSpec(str(lora), 0.8),), guidance=2.0)
    ours, _ = generate(backbone, [PROMPT], steps=2, seed=3)
    assert torch.equal(ours, _stock_latents(tiny_sd_dir, lora, 0.8, fuse=True))
    # Fusing is the LoRA itself, not a different model: the unfused adapter gives the same latents to rounding.
    torch.testing.assert_close(ours, _stock_latents(tiny_sd_dir, lora, 0.8, fuse=False), rtol=0, atol=1e-4)
    plain, _ = generate(open_backbone(str(tiny_sd_dir), guidance=2.0), [PROMPT], steps=2, seed=3)
    assert (ours - plain).abs().max() > 0.1
    (spec,) = backbone.source.loras
    assert spec.scale == 0.8 and len(spec.sha256) == 64
    # Nothing of peft stays behind: the quantizer sees plain Linear layers.
    assert not any("lora" in name for name, _ in backbone.pipe.unet.named_modules())


def test_lora_default_guidance_is_low(tiny_sd_dir, lora):
    backbone = open_backbone(str(tiny_sd_dir), loras=(LoraSpec(str(lora)),))
    assert backbone.guidance.scale == 1.0 and "LoRA-distilled" in backbone.guidance.reason and not backbone.do_cfg


@pytest.mark.parametrize("text,spec", [("a.safetensors", LoraSpec("a.safetensors", 1.0)), ("a.safetensors:0.5", LoraSpec("a.safetensors", 0.5)),
                                       ("org/name:2", LoraSpec("org/name", 2.0)), ("C:/x/y.safetensors", LoraSpec("C:/x/y.safetensors", 1.0))])
def test_parse_lora(text, spec):
    assert parse_lora(text) == spec


@pytest.mark.parametrize("text", [":0.5", "x.safetensors:0", "x.safetensors:-1", "x.safetensors:nan"])
def test_parse_lora_refuses(text):
    with pytest.raises(QSchedError):
        parse_lora(text)


def test_lora_in_qsched_and_manifest_and_mismatch_refused(tiny_sd_dir, lora, tmp_path):
    from qsched_export.export import ExportConfig, export_artifact
    from qsched_export.qsched_file import QSchedFile, SchemeEntry, read_qsched, write_qsched
    from qsched_export.sampler import QSchedCoefficients
    from runtimes.manifest import load_manifest

    backbone = open_backbone(str(tiny_sd_dir), loras=(LoraSpec(str(lora), 0.8),), guidance=2.0)
    plan = backbone.plan(2)
    qsched = tmp_path / "qsched.json"
    write_qsched(qsched, QSchedFile(str(tiny_sd_dir), plan.family, 2, 2.0, {"fp32": SchemeEntry(QSchedCoefficients.ones(2))},
                                    plan.to_dict(), tuple(x.to_dict() for x in backbone.source.loras)))
    assert read_qsched(qsched).loras[0]["sha256"] == backbone.source.loras[0].sha256
    artifact = export_artifact(ExportConfig(out=tmp_path / "a", model=str(tiny_sd_dir), coeffs=qsched, steps=2, loras=(LoraSpec(str(lora), 0.8),)))
    assert load_manifest(artifact).loras == tuple(x.to_dict() for x in backbone.source.loras)
    # Another scale, no LoRA: refused, naming both.
    for extra, needle in ((["--lora", f"{lora}:0.5"], f"LoRA {lora}:0.8 vs {lora}:0.5"), ([], f"LoRA {lora}:0.8 vs no LoRA")):
        result = runner.invoke(app, ["export", "--model", str(tiny_sd_dir), "--coeffs", str(qsched), "--steps", "2", "--bits", "32",
                                     "--out", str(tmp_path / "b"), *extra])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert needle in " ".join(result.output.split())
        assert not (tmp_path / "b").exists()


def test_bad_loras_are_one_line_errors(tiny_sd_dir, tmp_path):
    from qsched_export.testing import save_tiny_sdxl

    from safetensors.torch import load_file, save_file

    pickled = tmp_path / "lora.safetensors"
    pickled.write_bytes(b"\x80\x04not safetensors")
    sd_lora = _make_lora(tiny_sd_dir, tmp_path / "sd-lora")  # SD1.5-shaped layers, loaded into an SDXL pipeline
    sdxl = save_tiny_sdxl(tmp_path / "sdxl")
    renamed = tmp_path / "renamed" / "lora.safetensors"  # keys naming blocks the UNet does not have
    renamed.parent.mkdir()
    save_file({k.replace("down_blocks", "missing_blocks").replace("up_blocks", "missing_blocks").replace("mid_block", "missing_block"): v
               for k, v in load_file(sd_lora).items()}, renamed)
    cases = [
        (["--model", str(tiny_sd_dir), "--lora", str(pickled)], "is not a safetensors file"),
        (["--model", str(tiny_sd_dir), "--lora", str(tmp_path / "missing.safetensors")], "not found"),
        (["--model", str(sdxl), "--lora", str(sd_lora)], "do not fit this StableDiffusionXLPipeline (shape mismatch)"),
        (["--model", str(tiny_sd_dir), "--lora", str(renamed)], "match no layer of this StableDiffusionPipeline"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["generate", "--prompt", PROMPT, "--steps", "2", "--out", str(tmp_path / "x.png"), *args])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert needle in " ".join(result.output.split()), result.output
        assert not (tmp_path / "x.png").exists()


def test_calibrate_records_the_lora(tiny_sd_dir, lora, tmp_path):
    from qsched_export.testing import save_tiny_clip

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    out = tmp_path / "q.json"
    result = runner.invoke(app, ["calibrate", "--model", str(tiny_sd_dir), "--lora", f"{lora}:0.8", "--bits", "8", "--grid", "2", "--no-refine",
                                 "--steps", "2", "--prompts", str(prompts), "--judge", str(save_tiny_clip(tmp_path / "judge")), "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [(x["id"], x["scale"]) for x in data["loras"]] == [(str(lora), 0.8)] and data["guidance_scale"] == 1.0
