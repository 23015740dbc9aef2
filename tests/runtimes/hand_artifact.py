"""A hand-made artifact folder in the exporter's contract (manifest, three graphs, tokenizer,
golden data), built from small ONNX graphs so runtime and target tests do not need the exporter.

The denoise graph is a real INT8 Q/DQ graph in TensorRT's form (per-tensor activations, int8
per-channel weight, zero point 0); its golden "fakequant" reference is its own ORT output and
its "fp32" reference the same graph without Q/DQ, so the thresholds see a realistic gap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_model

from runtimes.manifest import GraphSpec, ImageSpec, Manifest, TensorSpec, TokenizerSpec, write_manifest
from runtimes.schemes import SCHEMES

L, D, C, h, H = 16, 8, 4, 4, 8  # tokens, hidden, latent channels, latent size, image size
STEPS = 2
PROMPTS = ["a red circle"]


def _model(nodes, inputs, outputs, inits, opset=21):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = make_model(graph, opset)
    onnx.checker.check_model(model, full_check=True)
    return model


def text_encoder(rng) -> onnx.ModelProto:
    return _model([helper.make_node("Gather", ["embedding", "input_ids"], ["context"], name="embed")],
                  [("input_ids", TensorProto.INT64, [1, L])], [("context", TensorProto.FLOAT, [1, L, D])],
                  {"embedding": rng.standard_normal((80, D)).astype(np.float32)})


def denoise(rng, quantized: bool) -> onnx.ModelProto:
    """latents <- 0.8 latents + 0.1 (context mean @ W) + 0.05 noise[k], unrolled over STEPS; the
    MatMul takes a Q/DQ activation and an int8 per-channel weight when `quantized`."""
    w = rng.integers(-127, 128, size=(D, C * h * h), dtype=np.int8)
    w_scale = np.full(C * h * h, 0.01, np.float32)
    inits = {"axes": np.array([0, 1], np.int64), "flat": np.array([1, C, h, h], np.int64),
             "a": np.array(0.8, np.float32), "b": np.array(0.1, np.float32), "s": np.array(0.05, np.float32)}
    nodes = [helper.make_node("ReduceMean", ["context", "axes"], ["ctx"], name="ctx_mean", keepdims=1)]  # [1,1,D]
    if quantized:
        inits |= {"w_q": w, "w_scale": w_scale, "w_zp": np.zeros(C * h * h, np.int8),
                  "act_scale": np.array(0.02, np.float32), "act_zp": np.array(0, np.int8)}
        nodes += [helper.make_node("QuantizeLinear", ["ctx", "act_scale", "act_zp"], ["ctx_q"], name="ctx_quant"),
                  helper.make_node("DequantizeLinear", ["ctx_q", "act_scale", "act_zp"], ["ctx_dq"], name="ctx_dequant"),
                  helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant", axis=1),
                  helper.make_node("MatMul", ["ctx_dq", "w"], ["proj"], name="proj")]
    else:
        inits["w"] = w.astype(np.float32) * w_scale
        nodes.append(helper.make_node("MatMul", ["ctx", "w"], ["proj"], name="proj"))
    nodes += [helper.make_node("Reshape", ["proj", "flat"], ["cond"], name="cond"),
              helper.make_node("Mul", ["cond", "b"], ["cond_b"], name="cond_b"),
              helper.make_node("Split", ["noise"], [f"n{k}" for k in range(STEPS)], name="split", axis=0, num_outputs=STEPS)]
    x = "latents"
    for k in range(STEPS):
        inits[f"sq{k}"] = np.array([0], np.int64)
        nodes += [helper.make_node("Squeeze", [f"n{k}", f"sq{k}"], [f"z{k}"], name=f"z{k}"),
                  helper.make_node("Mul", [x, "a"], [f"ax{k}"], name=f"ax{k}"),
                  helper.make_node("Mul", [f"z{k}", "s"], [f"sz{k}"], name=f"sz{k}"),
                  helper.make_node("Add", [f"ax{k}", "cond_b"], [f"t{k}"], name=f"t{k}"),
                  helper.make_node("Add", [f"t{k}", f"sz{k}"], [_step_output(k)], name=f"step{k}")]
        x = _step_output(k)
    return _model(nodes, [("context", TensorProto.FLOAT, [1, L, D]), ("latents", TensorProto.FLOAT, [1, C, h, h]),
                          ("noise", TensorProto.FLOAT, [STEPS, 1, C, h, h])],
                  [("final_latents", TensorProto.FLOAT, [1, C, h, h]), ("first_latents", TensorProto.FLOAT, [1, C, h, h])], inits)


def _step_output(k: int) -> str:
    return "final_latents" if k == STEPS - 1 else ("first_latents" if k == 0 else f"x{k}")


def vae_decoder(rng) -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["final_latents", "w"], ["c"], name="to_rgb"),
                   helper.make_node("Resize", ["c", "", "scales"], ["up"], name="upsample", mode="nearest"),
                   helper.make_node("Sigmoid", ["up"], ["image"], name="to_unit")],
                  [("final_latents", TensorProto.FLOAT, [1, C, h, h])], [("image", TensorProto.FLOAT, [1, 3, H, H])],
                  {"w": rng.standard_normal((3, C, 1, 1)).astype(np.float32), "scales": np.array([1, 1, 2, 2], np.float32)})


def write_tokenizer(folder: Path) -> TokenizerSpec:
    from qsched_export.testing import write_clip_tokenizer
    from transformers import CLIPTokenizerFast

    write_clip_tokenizer(folder / "_slow", max_length=L)
    fast = CLIPTokenizerFast.from_pretrained(folder / "_slow")
    (folder / "tokenizer").mkdir()
    fast.backend_tokenizer.save(str(folder / "tokenizer" / "tokenizer.json"))
    import shutil

    shutil.rmtree(folder / "_slow")
    return TokenizerSpec("tokenizer", "input_ids", "tokenizer", "tokenizer.json", L, fast.pad_token_id, fast.bos_token_id, fast.eos_token_id)


def _run(model: onnx.ModelProto, feeds: dict, output: int = 0) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[output]


def make_artifact(folder: Path, *, quantized: bool = True) -> Path:
    """Write the artifact to `folder` (created) and return it."""
    from runtimes.tokenizer import PromptTokenizer

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    graphs = {"text_encoder": text_encoder(rng), "denoise": denoise(np.random.default_rng(1), quantized),
              "vae_decoder": vae_decoder(rng)}
    specs = {}
    for role, model in graphs.items():
        onnx.save(model, folder / f"{role}.onnx")
        io = [{v.name: TensorSpec(tuple(d.dim_value for d in v.type.tensor_type.shape.dim),
                                  helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name) for v in vs}
              for vs in (model.graph.input, model.graph.output)]
        specs[role] = GraphSpec(f"{role}.onnx", *io)
    tok = write_tokenizer(folder)
    ids = PromptTokenizer(folder, tok).ids(PROMPTS)
    latents = rng.standard_normal((1, C, h, h), dtype=np.float32)
    noise = rng.standard_normal((STEPS, 1, C, h, h), dtype=np.float32)
    context = _run(graphs["text_encoder"], {"input_ids": ids})
    golden = {"input_ids": ids, "latents": latents, "noise": noise}
    for ref, model in (("fakequant", graphs["denoise"]), ("fp32", denoise(np.random.default_rng(1), False))):
        final, first = (_run(model, {"context": context, "latents": latents, "noise": noise}, k) for k in (0, 1))
        golden[f"{ref}/final_latents"], golden[f"{ref}/first_latents"] = final, first
        golden[f"{ref}/image"] = _run(graphs["vae_decoder"], {"final_latents": final})
    np.savez(folder / "golden.npz", **golden)
    scheme = SCHEMES["w8a8" if quantized else "fp32"].to_dict()
    manifest = Manifest(
        tools={"qsched_export": "test"}, model={"id": "hand-made", "pipeline_class": "none", "backbone": "sd", "family": "euler_a"}, sampler={},
        steps=STEPS, guidance_scale=2.0, do_cfg=True, scheme=scheme, target_form="qdq" if quantized else "fp32",
        coefficients={"latent_coeff": [1.0] * STEPS, "output_coeff": [1.0] * STEPS}, image=ImageSpec(H, H, 1),
        latent_shape=(1, C, h, h), opset=21, graphs=specs, tokenizers=(tok,))
    write_manifest(folder, manifest)
    return folder
