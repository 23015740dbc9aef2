"""The hostile-user matrix of issue 14: bad inputs and dangerous outputs across every command.

One table, one test. Each case runs the real CLI (`python -m qsched_export`, see conftest) in its
own scratch folder, which holds the user's files (`damage.user_files`: notes, a thesis folder,
a FIFO, symlinks) and, where the case names them, a copy of a good artifact (`{good}`) or a
damaged one (`{bad}`). Every case asserts:

- the exit code (1: an error the user can fix, 2: a usage error, 0: accepted), reached before the
  command's work starts (`BEFORE_WORK`) unless the case needs that work to see the problem;
- no traceback, and no stderr line besides one `error: <problem> (<fix>)` line (and our own
  `warning:` lines): no library noise;
- the expected fragment in that line (lower-cased);
- that nothing changed in the scratch folder or the shared inputs except the paths the case
  lists in `writes` (no half-written output, no temp folder, special files still special).

Set QSCHED_MATRIX_REPORT=file.jsonl to record each case's exit code and message, and
QSCHED_MATRIX_FORBID=0 to let every command run its course instead of stopping it at its work
(the before/after tables in the issue's closing note are recorded so, on main and on this branch).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from damage import damaged, snapshot, user_files
from cli_runner import STEPS, copy_into


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    exit: int
    message: str  # lower-case fragment of the error line (or, for exit 0, of the output)
    damage: str | None = None  # a damaged copy of the good artifact at {bad} (damage.DAMAGE)
    writes: tuple[str, ...] = ()  # paths (under {work}) the case may create or change
    cwd: str = "{work}"
    needs: str | None = None  # "root" | "proc" | "no-tensorrt"
    forbid: str | None = "work"  # "work": an error case must fail before BEFORE_WORK[command]; None: it may need that work


# The work each command must refuse bad input before ("before any work starts"): loading the
# model, building the target, loading the artifact's graphs. The server ends a command that
# reaches it with exit 97. A case whose input can only be judged with that work done (steps
# against the scheduler's, a manifest against its graphs, parity) says forbid=None.
BEFORE_WORK = {"generate": "qsched_export.pipeline:load_pipeline", "calibrate": "qsched_export.pipeline:load_pipeline",
               "export": "qsched_export.pipeline:load_pipeline", "build": "qsched_export.targets.onnxruntime:build",
               "bundle": "qsched_export.targets.bundle:make_bundle", "check": "runtimes.pipeline:open_runner",
               "run": "runtimes.pipeline:open_runner"}
# An option given twice takes its last value (click), so a case appends what it changes to these.
M = ("--model", "{model}")
GEN = ("generate", *M, "--prompt", "a red circle", "--steps", str(STEPS), "--out", "{work}/g.png")
CAL = ("calibrate", *M, "--judge", "{judge}", "--prompts", "{prompts}", "--steps", str(STEPS), "--grid", "2", "--no-refine")
EXP = ("export", *M, "--bits", "32", "--steps", str(STEPS))
BUILD = ("build", "--from", "{exported}", "--target", "onnxruntime", "--bits", "32")
RUN = ("run", "--artifact", "{good}", "--prompt", "a red circle")

CASES = [
    # info
    Case("info: unknown option", ("info", "--bogus"), 2, "no such option: --bogus"),
    Case("info: works, quietly", ("info",), 0, "onnxruntime providers"),
    # generate (PyTorch)
    Case("generate: missing model", ("generate", "--model", "{work}/nope", "--prompt", "hi"), 1, "not found", forbid=None),
    Case("generate: --guidance -1", (*GEN, "--guidance", "-1"), 1, "guidance"),
    Case("generate: --guidance nan", (*GEN, "--guidance", "nan"), 1, "guidance"),
    Case("generate: --steps above training steps", (*GEN, "--steps", "2000"), 1, "steps", forbid=None),
    Case("generate: --seed -1", (*GEN, "--seed", "-1"), 1, "seed"),
    Case("generate: --height 0", (*GEN, "--height", "0"), 1, "height"),
    Case("generate: --height 100000", (*GEN, "--height", "100000"), 1, "height"),
    Case("generate: --out through a symlink", (*GEN, "--out", "{work}/link.png"), 1, "symbolic link"),
    Case("generate: --out inside an artifact", (*GEN, "--out", "{good}/g.png"), 1, "inside the artifact"),
    # calibrate (PyTorch)
    Case("calibrate: --out is a folder", (*CAL, "--out", "{work}/userdata"), 1, "exists and is a folder"),
    Case("calibrate: --out is a FIFO", (*CAL, "--out", "{work}/pipe"), 1, "exists and is a fifo"),
    Case("calibrate: --out a symlink", (*CAL, "--out", "{work}/link.png"), 1, "symbolic link"),
    Case("calibrate: --prompts a binary file", (*CAL, "--prompts", "{work}/prompts.bin", "--out", "{work}/q.json"), 1, "prompt"),
    Case("calibrate: --prompts an empty file", (*CAL, "--prompts", "{work}/empty.txt", "--out", "{work}/q.json"), 1, "has no prompts"),
    Case("calibrate: --bits 3", (*CAL, "--bits", "3", "--out", "{work}/q.json"), 1, "bits"),
    # export (PyTorch)
    Case("export: --bits 3", (*EXP, "--bits", "3", "--out", "{work}/e"), 1, "bits must be"),
    Case("export: --text-weights int4", (*EXP, "--text-weights", "int4", "--out", "{work}/e"), 1, "text weights must be one of float, int8"),
    Case("export: --guidance nan", (*EXP, "--guidance", "nan", "--out", "{work}/e"), 1, "guidance"),
    Case("export: --height 0", (*EXP, "--height", "0", "--out", "{work}/e"), 1, "height"),
    Case("export: --height -64", (*EXP, "--height", "-64", "--out", "{work}/e"), 1, "height"),
    Case("export: --height 100000", (*EXP, "--height", "100000", "--out", "{work}/e"), 1, "height"),
    Case("export: --steps above training steps", (*EXP, "--steps", "2000", "--out", "{work}/e"), 1, "steps", forbid=None),
    Case("export: --coeffs a folder", (*EXP, "--coeffs", "{work}/userdata", "--out", "{work}/e"), 1, "folder"),
    Case("export: coefficients of 0", (*EXP, "--coeffs", "{work}/zero.json", "--out", "{work}/e"), 1, "coeff"),
    Case("export: negative coefficients", (*EXP, "--coeffs", "{work}/negative.json", "--out", "{work}/e"), 1, "coeff"),
    Case("export: coefficients of 1e30", (*EXP, "--coeffs", "{work}/huge.json", "--out", "{work}/e"), 1, "coeff"),
    Case("export: --bits 32 with a qsched.json without fp32", (*EXP, "--coeffs", "{qsched}", "--out", "{work}/e"), 0, "wrote", writes=("e",)),
    Case("export: --out a regular file --overwrite", (*EXP, "--out", "{work}/user.txt", "--overwrite"), 1, "regular file"),
    Case("export: --out a user's folder --overwrite", (*EXP, "--out", "{work}/userdata", "--overwrite"), 1, "not a qsched-export artifact"),
    Case("export: --out . --overwrite", (*EXP, "--out", ".", "--overwrite"), 1, "working folder"),
    # build
    Case("build: --bits 3", ("build", "--target", "onnxruntime", "--bits", "3", *M, "--out", "{work}/b"), 1, "--bits must be 4, 8, 16 or 32"),
    Case("build: --coeffs a folder", ("build", "--target", "onnxruntime", "--bits", "32", *M, "--coeffs", "{work}/userdata", "--out", "{work}/b"),
         1, "folder", forbid="qsched_export.pipeline:load_pipeline"),
    Case("build: --from, wrong --bits", (*BUILD, "--bits", "8", "--out", "{work}/b"), 1, "holds scheme fp32"),
    Case("build: --text-weights int4", ("build", "--target", "onnxruntime", "--text-weights", "int4", *M, "--out", "{work}/b"), 1,
         "text weights must be one of float, int8", forbid="qsched_export.pipeline:load_pipeline"),
    Case("build: --from with --text-weights int8", (*BUILD, "--text-weights", "int8", "--out", "{work}/b"), 1, "drop --text-weights with --from"),
    Case("build: ort-mobile with --text-weights int8", ("build", "--target", "ort-mobile", "--text-weights", "int8", *M, "--out", "{work}/b"), 1,
         "ort-mobile cannot keep int8 text-encoder weights", forbid="qsched_export.pipeline:load_pipeline"),
    Case("build: --out a user's folder --overwrite", (*BUILD, "--out", "{work}/userdata", "--overwrite"), 1, "not a qsched-export artifact"),
    Case("build: --out a regular file --overwrite", (*BUILD, "--out", "{work}/user.txt", "--overwrite"), 1, "regular file"),
    Case("build: --out . --overwrite in an artifact", (*BUILD, "--out", ".", "--overwrite"), 1, "working folder", cwd="{good}"),
    Case("build: --out under a file", (*BUILD, "--out", "{work}/user.txt/built"), 1, "is a file, not a folder"),
    Case("build: --out a symlink --overwrite", (*BUILD, "--out", "{work}/linkdir", "--overwrite"), 1, "symbolic link"),
    Case("build: --out a FIFO", (*BUILD, "--out", "{work}/pipe", "--overwrite"), 1, "fifo"),
    Case("build: --out inside an artifact", (*BUILD, "--out", "{good}/built"), 1, "inside the artifact"),
    Case("build: --out /proc/qq", (*BUILD, "--out", "/proc/qsched-matrix"), 1, "cannot write in /proc", needs="proc"),
    Case("build: graph file ../", ("build", "--from", "{bad}", "--target", "onnxruntime", "--bits", "32", "--out", "{work}/b"), 1,
         "not a relative path inside the artifact", damage="graph ../"),
    Case("build: TensorRT missing", (*BUILD, "--target", "tensorrt", "--out", "{work}/t"), 1, "tensorrt is not installed",
         needs="no-tensorrt"),
    Case("build: failing parity keeps the old artifact", ("build", "--from", "{bad}", "--target", "onnxruntime", "--bits", "32",
                                                          "--out", "{good}", "--overwrite"), 1, "parity", damage="golden negated", forbid=None),
    # bundle
    Case("bundle: --target onnxruntime", ("bundle", "--target", "onnxruntime", "--from", "{exported}", "--out", "{work}/u"), 1, "bundle is for --target tensorrt"),
    Case("bundle: --text-weights int4", ("bundle", *M, "--text-weights", "int4", "--out", "{work}/u"), 1, "text weights must be one of float, int8",
         forbid="qsched_export.pipeline:load_pipeline"),
    Case("bundle: --out a user's folder --overwrite", ("bundle", "--from", "{exported}", "--bits", "32", "--out", "{work}/userdata", "--overwrite"),
         1, "not a qsched-export artifact"),
    Case("bundle: --out a regular file --overwrite", ("bundle", "--from", "{exported}", "--bits", "32", "--out", "{work}/user.txt", "--overwrite"),
         1, "regular file"),
    # check
    Case("check: parity fails", ("check", "--artifact", "{bad}"), 1, "parity failed", damage="golden negated", forbid=None,
         writes=("bad/parity.json",)),
    Case("check: tampered file", ("check", "--artifact", "{bad}"), 1, "sha256 mismatch: golden.npz", damage="tampered"),
    Case("check: binary manifest", ("check", "--artifact", "{bad}"), 1, "not utf-8 text", damage="binary manifest"),
    Case("check: files null", ("check", "--artifact", "{bad}"), 1, "'files' must map each path to its sha256", damage="files null"),
    Case("check: files empty", ("check", "--artifact", "{bad}"), 1, "lists no files", damage="files empty"),
    Case("check: graph file absolute", ("check", "--artifact", "{bad}"), 1, "not a relative path inside", damage="graph absolute"),
    Case("check: files entry ../", ("check", "--artifact", "{bad}"), 1, "'../user.txt' is not a relative path", damage="files outside"),
    Case("check: graph is a symlink out", ("check", "--artifact", "{bad}"), 1, "leads out of the artifact folder", damage="graph symlink out"),
    Case("check: external data not listed", ("check", "--artifact", "{bad}"), 1, "does not list with a sha256: denoise.onnx.data",
         damage="external data unlisted"),
    Case("check: parity.json is a folder", ("check", "--artifact", "{bad}"), 1, "parity.json exists and is a folder", damage="parity.json a folder",
         forbid=None),
    Case("check: corrupted tokenizer, hashes updated", ("check", "--artifact", "{bad}"), 1, "tokenizer", damage="tokenizer corrupt"),
    Case("check: corrupted golden, hashes updated", ("check", "--artifact", "{bad}"), 1, "golden", damage="golden corrupt", forbid=None),
    Case("check: golden without the step-1 references", ("check", "--artifact", "{bad}"), 1, "first_latents", damage="golden without step 1",
         forbid=None),
    # run
    Case("run: empty prompt", ("run", "--artifact", "{good}", "--prompt", " ", "--out", "{work}/r.png"), 1, "empty prompt"),
    Case("run: --seed -1", (*RUN, "--seed", "-1", "--out", "{work}/r.png"), 1, "--seed must be 0 or more"),
    Case("run: --out a folder", (*RUN, "--out", "{work}/userdata"), 1, "is a folder"),
    Case("run: --out under a file", (*RUN, "--out", "{work}/user.txt/r.png"), 1, "is a file, not a folder"),
    Case("run: --out unwritable", (*RUN, "--out", "/proc/qsched-matrix.png"), 1, "cannot write in /proc", needs="proc"),
    Case("run: --out a FIFO", (*RUN, "--out", "{work}/pipe"), 1, "fifo"),
    Case("run: --out a device node", (*RUN, "--out", "{work}/mynull"), 1, "character device", needs="root"),
    Case("run: --out a symlink", (*RUN, "--out", "{work}/link.png"), 1, "symbolic link"),
    Case("run: --out the artifact's manifest", (*RUN, "--out", "{good}/manifest.json"), 1, "inside the artifact folder"),
    Case("run: --out x.gif", (*RUN, "--out", "{work}/x.gif"), 1, "end the path in one of .png, .jpg, .jpeg, .webp"),
    Case("run: --out x.jpg", (*RUN, "--out", "{work}/x.jpg"), 0, "wrote", writes=("x.jpg",)),
    Case("run: long prompt is cut with a warning", ("run", "--artifact", "{good}", "--prompt", "two small red circles on a blue background " * 3,
                                                     "--out", "{work}/long.png"), 0, "those are dropped", writes=("long.png",)),
    Case("run: manifest shapes do not match the graphs", ("run", "--artifact", "{bad}", "--prompt", "hi", "--out", "{work}/r.png"), 1,
         "could not run denoise.onnx", damage="latent shape wrong", forbid=None),
]

_FIX_FORM = re.compile(r"^error: .+ \(.+\)$")


def _setup(case: Case, work: Path, shared: Path) -> dict[str, Path]:
    user_files(work)
    (work / "prompts.bin").write_bytes(bytes(range(256)) * 4)
    (work / "empty.txt").write_text("")
    for name, value in (("zero", 0.0), ("negative", -1.0), ("huge", 1e30)):
        (work / f"{name}.json").write_text(json.dumps({"latent_coeff": [value] * STEPS, "output_coeff": [value] * STEPS}))
    if case.needs == "root":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root (os.mknod); the FIFO case covers special files here")
        os.mknod(work / "mynull", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    if case.needs == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc as a place no one can write")
    if case.needs == "no-tensorrt" and _has_tensorrt():
        pytest.skip("tensorrt is installed: the missing-TensorRT message cannot be reached")
    places = {"work": work, "model": shared / "model", "judge": shared / "judge", "prompts": shared / "prompts.txt",
              "qsched": shared / "qsched.json", "exported": shared / "exported", "good": work / "good"}
    copy_into(shared / "good", work / "good")
    if case.damage:
        places["bad"] = damaged(work, shared / "good", case.damage)
    return places


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _record(case: Case, result) -> None:
    report = os.environ.get("QSCHED_MATRIX_REPORT")
    if not report:
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = next((line for line in lines if line.startswith("error:")), None)
    if shown is None and "Traceback" in result.stderr:
        shown = "Traceback: " + lines[-1]
    with open(report, "a") as f:
        f.write(json.dumps({"case": case.id, "exit": result.exit, "message": shown or (lines[-1] if lines else "")}) + "\n")


def _param(case: Case):
    return pytest.param(case, id=case.id)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_case(case: Case, cli, shared, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    places = _setup(case, work, shared)
    argv = [arg.format(**places) for arg in case.argv]
    before = snapshot(work, shared)
    forbid = case.forbid if case.forbid != "work" else BEFORE_WORK.get(case.argv[0]) if case.exit != 0 else None
    if os.environ.get("QSCHED_MATRIX_FORBID") == "0":
        forbid = None
    result = cli(*argv, cwd=Path(case.cwd.format(**places)), forbid=forbid)
    after = snapshot(work, shared)
    _record(case, result)

    output = result.stdout + result.stderr
    assert result.exit is not None, f"still running after the time limit:\n{output[-2000:]}"
    assert result.exit != 97, f"it reached {forbid} before failing: the check must come before that work"
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    noise = [line for line in lines if not line.startswith(("error:", "warning:"))]
    assert not noise, f"stderr holds more than our own lines:\n{result.stderr[-2000:]}"
    assert result.exit == case.exit, output[-2000:]
    if case.exit == 0:
        assert not errors and case.message in " ".join(output.split()).lower(), output[-2000:]
    else:
        assert len(errors) == 1 and _FIX_FORM.match(errors[0]), f"not one 'error: problem (fix)' line:\n{result.stderr}"
        assert case.message in errors[0].lower(), errors[0]
    allowed = [str(work / rel) for rel in case.writes]
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    unexpected = [p for p in changed if not any(p == a or p.startswith(a + os.sep) for a in allowed)]
    assert not unexpected, f"changed outside the case's outputs: {unexpected}"


def test_the_matrix_covers_every_command():
    commands = {case.argv[0] for case in CASES}
    assert commands == {"info", "generate", "calibrate", "export", "build", "bundle", "check", "run"} and len(CASES) >= 40


@pytest.mark.parametrize("name,magic", [("x.jpg", b"\xff\xd8\xff"), ("x.png", b"\x89PNG"), ("x.webp", b"RIFF")])
def test_run_writes_the_format_its_suffix_names(cli, shared, tmp_path, name, magic):
    from PIL import features

    if name.endswith(".webp") and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    result = cli("run", "--artifact", shared / "good", "--prompt", "a red circle", "--out", tmp_path / name, cwd=tmp_path)
    assert result.exit == 0, result.stderr
    assert (tmp_path / name).read_bytes().startswith(magic), f"{name} does not hold what its suffix names"
