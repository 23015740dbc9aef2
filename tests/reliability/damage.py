"""What the matrix's cases start from: the user's own files (which every case must leave as they
were) and damaged copies of a good artifact, each named by what is wrong with it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` with its kind and content (sha256, link target, device number);
    links are recorded, never followed."""
    state: dict[str, tuple] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root, followlinks=False):
            for name in dirs + files:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                if os.path.islink(path):
                    state[path] = ("link", os.readlink(path))
                elif os.path.isdir(path):
                    state[path] = ("dir",)
                elif os.path.isfile(path):
                    state[path] = ("file", sha256(Path(path)))
                else:
                    state[path] = ("special", st.st_mode, st.st_rdev)
    return state


def user_files(work: Path) -> None:
    """A user's working folder: notes, a thesis folder, a FIFO and symlinks (one to a file, one
    to a folder)."""
    (work / "user.txt").write_text("my notes\n")
    (work / "userdata" / "sub").mkdir(parents=True)
    (work / "userdata" / "thesis.txt").write_text("four years of work\n")
    (work / "userdata" / "sub" / "data.csv").write_text("1,2\n")
    os.mkfifo(work / "pipe")
    (work / "link.png").symlink_to("user.txt")
    (work / "linkdir").symlink_to("userdata")


def _manifest(art: Path) -> dict:
    return json.loads((art / "manifest.json").read_text())


def _save_manifest(art: Path, data: dict) -> None:
    (art / "manifest.json").write_text(json.dumps(data, indent=2))


def edit_manifest(art: Path, change) -> None:
    """Apply `change` to the manifest's data and save it (no re-hash: damage as a hand edit leaves it)."""
    data = _manifest(art)
    change(data)
    _save_manifest(art, data)


def _rehash(art: Path, *rels: str) -> None:
    """Record the current sha256 of `rels`: damage that a careless re-hash made look valid."""
    def change(data):
        for rel in rels:
            data["files"][rel] = sha256(art / rel)
    edit_manifest(art, change)


def _outside_copy(work: Path, art: Path) -> Path:
    return Path(shutil.copy2(art / "denoise.onnx", work / "outside.onnx"))


def _rewrite_golden(art: Path, keep=lambda key: True, change=None) -> None:
    with np.load(art / "golden.npz") as golden:
        data = {k: golden[k] for k in golden.files if keep(k)}
    for key in list(data):
        if change is not None:
            data[key] = change(key, data[key])
    with open(art / "golden.npz", "wb") as f:  # np.savez on a path would append .npz to no suffix; this keeps the name
        np.savez(f, **data)
    _rehash(art, "golden.npz")


def _references_negated(key: str, value: np.ndarray) -> np.ndarray:
    if key.endswith("/image"):
        return 1.0 - value
    return -value if "/" in key else value


def _external_data(art: Path) -> None:
    import onnx

    model = onnx.load(art / "denoise.onnx")
    onnx.save_model(model, art / "denoise.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="denoise.onnx.data", size_threshold=0)
    _rehash(art, "denoise.onnx")  # the graph is listed, its external data is not


# name -> (work, artifact copy) -> None. The copy is `work/bad`, made from the good artifact.
DAMAGE = {
    "graph ../": lambda work, art: (_outside_copy(work, art), edit_manifest(art, lambda d: d["graphs"]["denoise"].update(file="../outside.onnx"))),
    "graph absolute": lambda work, art: edit_manifest(art, lambda d: d["graphs"]["denoise"].update(file=str(_outside_copy(work, art)))),
    "files outside": lambda work, art: edit_manifest(art, lambda d: d["files"].update({"../user.txt": sha256(work / "user.txt")})),
    "graph symlink out": lambda work, art: (_outside_copy(work, art), (art / "denoise.onnx").unlink(),
                                            (art / "denoise.onnx").symlink_to("../outside.onnx")),
    "binary manifest": lambda work, art: (art / "manifest.json").write_bytes(bytes(range(256)) * 8),
    "files null": lambda work, art: edit_manifest(art, lambda d: d.update(files=None)),
    "files empty": lambda work, art: edit_manifest(art, lambda d: d.update(files={})),
    "tokenizer corrupt": lambda work, art: ((art / "tokenizer" / "tokenizer.json").write_bytes(b"\x00\xffnot a tokenizer" * 64),
                                            _rehash(art, "tokenizer/tokenizer.json")),
    "golden corrupt": lambda work, art: ((art / "golden.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4), _rehash(art, "golden.npz")),
    "golden without step 1": lambda work, art: _rewrite_golden(art, keep=lambda key: not key.endswith("/first_latents")),
    "golden negated": lambda work, art: _rewrite_golden(art, change=_references_negated),
    "parity.json a folder": lambda work, art: ((art / "parity.json").unlink(), (art / "parity.json").mkdir()),
    "external data unlisted": lambda work, art: _external_data(art),
    "latent shape wrong": lambda work, art: edit_manifest(art, lambda d: d["graphs"]["denoise"]["inputs"]["latents"].update(shape=[1, 4, 3, 3])),
    "tampered": lambda work, art: (art / "golden.npz").write_bytes((art / "golden.npz").read_bytes() + b"x"),
}


def damaged(work: Path, good: Path, what: str) -> Path:
    art = Path(shutil.copytree(good, work / "bad", symlinks=True))
    DAMAGE[what](work, art)
    return art
