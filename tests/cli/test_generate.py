"""`qsched-export generate` and the loading rules, through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from qsched_export.cli import app
from qsched_export.errors import QSchedError
from qsched_export.pipeline import generate, load_pipeline, open_backbone, to_pil
from qsched_export.sampler import QSchedCoefficients

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text


def test_generate_writes_png_equal_to_the_python_api(tiny_sd_dir, tmp_path):
    out = tmp_path / "img.png"
    result = runner.invoke(app, ["generate", "--model", str(tiny_sd_dir), "--prompt", "a red circle", "--steps", "2", "--seed", "3", "--guidance", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.size == (16, 16)
    _, images = generate(open_backbone(str(tiny_sd_dir), guidance=2.0), ["a red circle"], steps=2, seed=3)
    assert list(written.getdata()) == list(to_pil(images)[0].getdata())


def test_generate_with_coefficients_changes_the_image(tiny_sd_dir, tmp_path):
    coeffs = tmp_path / "c.json"
    coeffs.write_text(json.dumps({"latent_coeff": [0.8, 1.0], "output_coeff": [1.2, 1.0]}))
    backbone = open_backbone(str(tiny_sd_dir), guidance=2.0)
    base, _ = generate(backbone, ["a red circle"], steps=2, seed=3)
    scaled, _ = generate(backbone, ["a red circle"], steps=2, seed=3, coefficients=QSchedCoefficients((0.8, 1.0), (1.2, 1.0)))
    assert (base - scaled).abs().max() > 1e-3
    result = runner.invoke(app, ["generate", "--model", str(tiny_sd_dir), "--prompt", "a red circle", "--steps", "2", "--coeffs", str(coeffs), "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args,needles", [
    (["--model", "/nonexistent/model-folder"], ["model folder /nonexistent/model-folder not found"]),
    (["--steps", "0"], ["steps must be >= 1"]),
    (["--scheduler", "ddim"], ["unknown scheduler 'ddim'"]),
    (["--prompt", "   "], ["empty prompt"]),
    (["--out", "x.gif"], ["cannot tell an image format from"]),
])
def test_bad_input_one_line(tiny_sd_dir, tmp_path, args, needles):
    base = {"--model": str(tiny_sd_dir), "--prompt": "a red circle", "--out": str(tmp_path / "x.png")}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    result = runner.invoke(app, ["generate", *[x for kv in base.items() for x in kv]] + ([] if "--steps" in base else ["--steps", "2"]))
    _one_line_error(result, *needles)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content,needles", [
    ({"latent_coeff": [1.0], "output_coeff": [1.0]}, ["coefficients are for 1 steps but the sampler runs 2"]),
    ('{"latent_coeff": [NaN, 1.0], "output_coeff": [1.0, 1.0]}', ["latent_coeff holds nan, outside the plausible range"]),
    ({"latent_coeff": [0.0, 1.0], "output_coeff": [1.0, 1.0]}, ["latent_coeff holds 0.0, outside the plausible range"]),
    ("{not json", ["is not valid JSON"]),
])
def test_bad_coefficient_files(tiny_sd_dir, tmp_path, content, needles):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = runner.invoke(app, ["generate", "--model", str(tiny_sd_dir), "--prompt", "a", "--steps", "2", "--coeffs", str(path), "--out", str(tmp_path / "x.png")])
    _one_line_error(result, *needles)


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QSchedError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path / "empty"))


def test_unsupported_scheduler_in_folder(tiny_pipeline_factory):
    folder = tiny_pipeline_factory("DDIMScheduler")
    with pytest.raises(QSchedError, match="unsupported scheduler DDIMScheduler"):
        load_pipeline(str(folder))
    pipe, _ = load_pipeline(str(folder), scheduler="tcd")
    assert type(pipe.scheduler).__name__ == "TCDScheduler"


def test_pickle_weights_are_refused(tmp_path):
    """Safe by default: a folder with only pickled .bin weights does not load."""
    from diffusers import StableDiffusionPipeline

    from qsched_export.testing import clip_tokenizer, tiny_sd_components

    pipe = StableDiffusionPipeline(**tiny_sd_components(), tokenizer=clip_tokenizer(tmp_path / "tok"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(QSchedError, match="could not load"):
        load_pipeline(str(tmp_path / "pickled"))


def test_hub_id_passed_unchanged_without_remote_code(monkeypatch):
    import diffusers

    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(source=source, **kwargs)
        raise OSError("no network in this test")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", fake_from_pretrained)
    with pytest.raises(QSchedError, match="could not load latent-consistency/lcm-lora-sdv1-5"):
        load_pipeline("latent-consistency/lcm-lora-sdv1-5")
    assert seen == {"source": "latent-consistency/lcm-lora-sdv1-5", "dtype": torch.float32, "use_safetensors": True, "trust_remote_code": False}


def test_version_and_info():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == "qsched-export 0.1.0"
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "CPUExecutionProvider" in result.output
