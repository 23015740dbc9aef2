"""Bad input for the SDXL and FLUX backbones: one-line errors naming the problem and the fix, and
nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qsched_export.cli import app
from qsched_export.errors import QSchedError
from qsched_export.pipeline import open_backbone

runner = CliRunner()


def _one_line_error(args: list[str], needle: str, tmp_path) -> None:
    out = tmp_path / "x.png"
    result = runner.invoke(app, ["generate", "--prompt", "a red circle", "--steps", "2", "--out", str(out), *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error:")]) == 1, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_sdxl_with_a_scheduler_we_do_not_cover(tiny_model_factory, tmp_path):
    model = tiny_model_factory("sdxl", scheduler_cls="DDIMScheduler")
    _one_line_error(["--model", str(model)], "unsupported scheduler DDIMScheduler", tmp_path)


def test_flux_with_another_sampler_family(tiny_model_factory, tmp_path):
    model = tiny_model_factory("flux")
    _one_line_error(["--model", str(model), "--scheduler", "euler_a"], "is not a combination we cover", tmp_path)


def test_flux_size_that_cannot_be_packed(tiny_model_factory, tmp_path):
    model = tiny_model_factory("flux")  # vae_scale_factor 2: latents packed 2x2 need sides divisible by 4
    _one_line_error(["--model", str(model), "--height", "18"], "height must be a multiple of 4 for this model, got 18", tmp_path)


def test_t5_length_above_the_models_maximum(tiny_model_factory, tmp_path):
    model = tiny_model_factory("flux")
    _one_line_error(["--model", str(model), "--max-sequence-length", "13"], "T5 length 13 is outside 1..12", tmp_path)
    assert open_backbone(str(model), text_length=5).tokenizer_roles()[1].max_length == 5
    with pytest.raises(QSchedError, match="applies to T5-conditioned models"):
        open_backbone(str(tiny_model_factory("sdxl", scheduler_cls="EulerAncestralDiscreteScheduler")), text_length=5)


def test_unsupported_pipeline_class_names_the_supported(tiny_sd_dir, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir)
    StableDiffusionImg2ImgPipeline(**pipe.components).save_pretrained(tmp_path / "img2img", safe_serialization=True)
    _one_line_error(["--model", str(tmp_path / "img2img")], "pipeline class StableDiffusionImg2ImgPipeline is not supported (use a pipeline of one of: "
                    "FluxPipeline, LatentConsistencyModelPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline)", tmp_path)
