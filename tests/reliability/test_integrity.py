"""Every path a manifest names stays inside its artifact folder, and every file a runtime opens is
listed with its sha256 (runtimes/manifest.py, runtimes/onnx_external.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from damage import edit_manifest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import convert_model_to_external_data
from onnx_models import make_model

from runtimes.manifest import ArtifactError, artifact_path, hash_folder, load_manifest, write_manifest
from runtimes.onnx_external import external_data_locations


@pytest.fixture
def artifact(tmp_path) -> Path:
    from hand_artifact import make_artifact  # tests/runtimes, a small artifact in the exporter's contract

    return make_artifact(tmp_path / "art", quantized=False)


@pytest.mark.parametrize("rel", ["../x.onnx", "/etc/passwd", "a/../../x", "", ".", "a\\..\\x"])
def test_artifact_path_refuses_paths_that_leave_the_folder(tmp_path, rel):
    with pytest.raises(ArtifactError, match="not a relative path inside the artifact folder"):
        artifact_path(tmp_path, rel)


def test_artifact_path_follows_links_only_inside(tmp_path):
    root = tmp_path / "art"
    (root / "sub").mkdir(parents=True)
    (root / "real.onnx").write_text("g")
    (root / "sub" / "inside.onnx").symlink_to("../real.onnx")
    (tmp_path / "outside.onnx").write_text("g")
    (root / "out.onnx").symlink_to("../outside.onnx")
    assert artifact_path(root, "sub/inside.onnx") == root / "sub" / "inside.onnx"
    with pytest.raises(ArtifactError, match="leads out of the artifact folder"):
        artifact_path(root, "out.onnx")


@pytest.mark.parametrize("change,message", [
    (lambda d: d["graphs"]["denoise"].update(file="../denoise.onnx"), "'../denoise.onnx' is not a relative path"),
    (lambda d: d.update(golden="/tmp/golden.npz"), "'/tmp/golden.npz' is not a relative path"),
    (lambda d: d["tokenizers"][0].update(dir="../tokenizer"), "'../tokenizer/tokenizer.json' is not a relative path"),
    (lambda d: d["files"].update({"../../etc/passwd": "0" * 64}), "'../../etc/passwd' is not a relative path"),
    (lambda d: d.update(files=None), "'files' must map each path to its sha256, got null"),
    (lambda d: d.update(files=["golden.npz"]), "got list"),
    (lambda d: d["files"].update({"golden.npz": "not-a-hash"}), "got an entry without a sha256"),
])
def test_bad_paths_and_listings_are_refused_even_without_verifying(artifact, change, message):
    edit_manifest(artifact, change)
    with pytest.raises(ArtifactError, match=message):
        load_manifest(artifact, verify=False)


def test_every_file_the_runtime_opens_must_be_listed(artifact):
    edit_manifest(artifact, lambda d: d["files"].pop("tokenizer/tokenizer.json"))
    with pytest.raises(ArtifactError, match="does not list with a sha256: tokenizer/tokenizer.json"):
        load_manifest(artifact)
    edit_manifest(artifact, lambda d: d.update(files={}))
    with pytest.raises(ArtifactError, match="lists no files"):
        load_manifest(artifact)


def test_a_binary_or_oversized_manifest_is_one_line(artifact):
    (artifact / "manifest.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ArtifactError, match="is not UTF-8 text"):
        load_manifest(artifact)


def test_external_data_must_be_listed(artifact):
    model = onnx.load(artifact / "denoise.onnx")
    onnx.save_model(model, artifact / "denoise.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="denoise.onnx.data", size_threshold=0)
    manifest = load_manifest(artifact, verify=False)
    write_manifest(artifact, manifest)  # lists every file now in the folder, the external data too
    assert "denoise.onnx.data" in load_manifest(artifact).files
    edit_manifest(artifact, lambda d: d["files"].pop("denoise.onnx.data"))
    with pytest.raises(ArtifactError, match="does not list with a sha256: denoise.onnx.data"):
        load_manifest(artifact)


def test_hash_folder_refuses_links_and_skips_our_temp_files(tmp_path):
    (tmp_path / "a.onnx").write_text("g")
    (tmp_path / ".parity.json.qsched-tmp-123-0123abcd").write_text("half-written")
    assert list(hash_folder(tmp_path)) == ["a.onnx"]
    (tmp_path / "b.onnx").symlink_to("a.onnx")
    with pytest.raises(ArtifactError, match="holds the symbolic link b.onnx"):
        hash_folder(tmp_path)


def _external_model(tmp_path: Path) -> Path:
    """Tensors in an initializer, a Constant node's attribute and an If branch (a subgraph)."""
    big = lambda name: numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), name)  # noqa: E731
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=big("c_value"))], "branch", [],
                               [helper.make_tensor_value_info("c", TensorProto.FLOAT, [8, 8])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=big("k_value")), helper.make_node("Add", ["x", "w"], ["y0"]),
         helper.make_node("Add", ["y0", "k"], ["y1"]),
         helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch), helper.make_node("Add", ["y1", "z"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])], [big("w")])
    model = make_model(graph, 17)
    convert_model_to_external_data(model, all_tensors_to_one_file=False, size_threshold=0, convert_attribute=True)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    return path


def test_external_data_locations_match_onnx_and_skip_the_weights(tmp_path):
    path = _external_model(tmp_path)
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    expected = sorted({entry.value for t in _get_all_tensors(onnx.load(path, load_external_data=False)) if uses_external_data(t)
                       for entry in t.external_data if entry.key == "location"})
    assert sorted(external_data_locations(path)) == expected == ["c_value", "k_value", "w"]  # c_value: in both If branches
    inline = tmp_path / "inline.onnx"
    onnx.save_model(onnx.load(path), inline)
    assert external_data_locations(inline) == []


@pytest.mark.parametrize("data", [b"", b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f"])
def test_a_file_that_is_not_onnx_is_a_value_error(tmp_path, data):
    (tmp_path / "x.onnx").write_bytes(data)
    with pytest.raises(ValueError):
        external_data_locations(tmp_path / "x.onnx")


def test_a_copied_artifact_still_verifies(artifact, tmp_path):
    copy = Path(shutil.copytree(artifact, tmp_path / "copy"))
    assert load_manifest(copy).files == load_manifest(artifact).files
