"""runtimes/files.py, the one output writer, in-process: what it refuses, how it swaps, what a
killed run leaves and how the next run cleans it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qsched_export.cli.common import EXIT_INTERRUPTED, Terminated, user_errors
from runtimes.files import (OutputError, atomic_file, check_output_file, check_output_folder, clean_stale, is_owned_temp, note_outcome,
                            outcomes, scratch_dir, staged_dir)
from runtimes.images import save_image

MANIFEST = json.dumps({"schema_version": 1, "files": {"a.onnx": "0" * 64}})


def _artifact(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(MANIFEST)
    (folder / "a.onnx").write_text("graph")
    return folder


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# atomic_file

def test_atomic_file_replaces_a_regular_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "report.json"
    with atomic_file(target) as f:
        f.write("héllo")  # text is UTF-8 whatever the locale
    with atomic_file(target) as f:
        f.write("second")
    assert target.read_text() == "second" and _names(target.parent) == ["report.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("make,message", [
    (lambda p: os.mkfifo(p), r"is a FIFO \(named pipe\), not a regular file"),
    (lambda p: p.mkdir(), "is a folder, not a regular file"),
    (lambda p: ((p.parent / "real.txt").write_text("mine"), p.symlink_to("real.txt")), "is a symbolic link"),
], ids=["fifo", "folder", "symlink"])
def test_atomic_file_refuses_what_is_not_a_regular_file(tmp_path, make, message):
    target = tmp_path / "out.png"
    make(target)
    before = (_names(tmp_path), os.lstat(target).st_mode)
    with pytest.raises(OutputError, match=message):
        with atomic_file(target, "wb") as f:
            f.write(b"x")
    assert (_names(tmp_path), os.lstat(target).st_mode) == before
    if (tmp_path / "real.txt").exists():
        assert (tmp_path / "real.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root (os.mknod)")
def test_atomic_file_refuses_a_device_node(tmp_path):
    import stat

    node = tmp_path / "mynull"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(OutputError, match="is a character device"):
        with atomic_file(node, "wb"):
            pass
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_atomic_file_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt is a file, not a folder"):
        with atomic_file(tmp_path / "notes.txt" / "x.png", "wb"):
            pass


def test_only_the_manifest_writer_replaces_an_artifacts_files(tmp_path):
    art = _artifact(tmp_path / "art")
    for rel in ("manifest.json", "a.onnx"):
        with pytest.raises(OutputError, match="part of the artifact"):
            with atomic_file(art / rel):
                pass
    with atomic_file(art / "manifest.json", artifact_writer=True) as f:
        f.write(MANIFEST)
    with atomic_file(art / "parity.json") as f:  # a report the artifact does not list
        f.write("{}")
    with pytest.raises(OutputError, match="inside the artifact folder"):  # but never a user's --out
        check_output_file(art / "image.png")
    assert (art / "a.onnx").read_text() == "graph"


def test_interrupted_atomic_file_keeps_the_old_file_and_says_so(tmp_path):
    target = tmp_path / "image.png"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt) as info:
        with atomic_file(target) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and _names(tmp_path) == ["image.png"]
    assert outcomes(info.value) == [f"{target} is unchanged"]


# check_output_folder and staged_dir

def test_staged_dir_replaces_an_artifact_only_when_the_block_finishes(tmp_path):
    out = _artifact(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with staged_dir(out, overwrite=True) as staging:
            (staging / "manifest.json").write_text(MANIFEST)
            assert is_owned_temp(staging.name) and staging.parent == tmp_path
            raise RuntimeError("parity failed")  # a failed check: the old artifact stays
    assert (out / "a.onnx").read_text() == "graph" and _names(tmp_path) == ["out"]
    with staged_dir(out, overwrite=True) as staging:
        (staging / "new.onnx").write_text("new")
    assert _names(out) == ["new.onnx"] and _names(tmp_path) == ["out"]
    assert oct(out.stat().st_mode & 0o777) == "0o755"


def test_staged_dir_says_what_an_interrupt_kept(tmp_path):
    out = _artifact(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt) as info:
        with staged_dir(out, overwrite=True):
            raise Terminated()
    assert outcomes(info.value) == [f"the previous {out} is unchanged"] and _names(tmp_path) == ["out"]
    with pytest.raises(KeyboardInterrupt) as info:
        with staged_dir(tmp_path / "new"):
            raise KeyboardInterrupt
    assert outcomes(info.value) == [f"{tmp_path / 'new'} was not created"]


def test_an_interrupt_after_the_swap_says_the_new_output_is_complete(tmp_path, monkeypatch):
    import runtimes.files as files

    out = _artifact(tmp_path / "out")
    real_rmtree = files.shutil.rmtree

    def interrupted_on_the_old_copy(path, *args, **kwargs):
        if ".qsched-old-" in str(path):
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", interrupted_on_the_old_copy)
    with pytest.raises(KeyboardInterrupt) as info:
        with staged_dir(out, overwrite=True) as staging:
            (staging / "new.onnx").write_text("new")
    assert outcomes(info.value) == [f"{out} is complete"] and _names(out) == ["new.onnx"]


@pytest.mark.parametrize("setup,overwrite,message", [
    (lambda out: out.mkdir(), False, "already exists"),
    (lambda out: out.write_text("mine"), True, "exists and is a regular file"),
    (lambda out: ((out / "sub").mkdir(parents=True), (out / "thesis.txt").write_text("mine")), True,
     r"not a qsched-export artifact \(it holds sub, thesis.txt\)"),
    (lambda out: ((out.parent / "real").mkdir(), out.symlink_to("real")), True, "is a symbolic link"),
    (lambda out: os.mkfifo(out), True, r"exists and is a FIFO"),
])
def test_check_output_folder_refuses(tmp_path, setup, overwrite, message):
    out = tmp_path / "out"
    setup(out)
    with pytest.raises(OutputError, match=message):
        check_output_folder(out, overwrite)


def test_check_output_folder_allows_an_empty_folder_or_an_artifact(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", overwrite=True) == tmp_path / "empty"
    assert check_output_folder(_artifact(tmp_path / "art"), overwrite=True) == tmp_path / "art"
    assert check_output_folder(tmp_path / "a" / "b" / "new") == tmp_path / "a" / "b" / "new"
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_overwrite_never_takes_the_working_folder_or_an_ancestor(tmp_path, monkeypatch):
    art = _artifact(tmp_path / "art")
    (art / "tokenizer").mkdir()
    for cwd in (art, art / "tokenizer"):
        monkeypatch.chdir(cwd)
        with pytest.raises(OutputError, match="the working folder or one holding it"):
            check_output_folder(art if cwd != art else Path("."), overwrite=True)


def test_check_output_folder_refuses_an_unwritable_place(tmp_path):
    if not Path("/proc/self").is_dir() and os.geteuid() == 0:
        pytest.skip("needs Linux's /proc or a non-root user to make a folder no one can write")
    if Path("/proc/self").is_dir():
        with pytest.raises(OutputError, match="cannot write in /proc"):
            check_output_folder(Path("/proc/qsched-test"))
    if os.geteuid() != 0:  # root writes through permissions; /proc stands in above
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="cannot write in"):
            check_output_folder(locked / "out")


# clean_stale

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_clean_stale_removes_only_what_a_dead_owner_left(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".out.qsched-tmp-{dead}-0123abcd").mkdir()
    (tmp_path / f".out.qsched-tmp-{dead}-0123abcd" / "denoise.onnx").write_text("partial")
    (tmp_path / f".x.png.qsched-tmp-{dead}-89abcdef").write_text("partial")
    (tmp_path / f".out.qsched-tmp-{os.getpid()}-00000000").mkdir()  # this live process's
    (tmp_path / ".out.tmp-abc").mkdir()  # not our naming
    (tmp_path / f".other.qsched-tmp-{dead}-0123abce").symlink_to("elsewhere")  # a link is never ours
    done = clean_stale(tmp_path)
    assert len(done) == 2
    assert _names(tmp_path) == [f".other.qsched-tmp-{dead}-0123abce", f".out.qsched-tmp-{os.getpid()}-00000000", ".out.tmp-abc"]


def test_clean_stale_never_removes_what_a_live_process_holds(tmp_path):
    """A process in another pid namespace looks dead to os.kill, but it holds the lock."""
    dead_looking = _dead_pid()
    temp = tmp_path / f".out.qsched-tmp-{dead_looking}-0123abcd"
    temp.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(temp)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert clean_stale(tmp_path) == [] and temp.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert len(clean_stale(tmp_path)) == 1 and not temp.exists()


def test_clean_stale_puts_back_an_artifact_a_kill_left_in_the_trash(tmp_path):
    """Killed between the two renames of a swap: the old artifact is in the trash, `out` is gone."""
    dead = _dead_pid()
    trash = _artifact(tmp_path / f".out.qsched-old-{dead}-0123abcd")
    (tmp_path / f".out.qsched-tmp-{dead}-89abcdef").mkdir()
    done = clean_stale(tmp_path)
    assert _names(tmp_path) == ["out"] and (tmp_path / "out" / "a.onnx").read_text() == "graph" and not trash.exists()
    assert any("restored" in line for line in done)


def test_scratch_dir_is_ours_and_gone_after(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with scratch_dir(tmp_path, "export") as scratch:
            (scratch / "half.onnx").write_text("x")
            assert is_owned_temp(scratch.name)
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_a_write_cleans_its_folder_first(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".out.qsched-tmp-{dead}-0123abcd").mkdir()
    with staged_dir(tmp_path / "out"):
        pass
    assert _names(tmp_path) == ["out"]


# what reaches the user

def test_an_interrupt_is_one_line_with_exit_130(capsys):
    import typer

    exc = Terminated()
    note_outcome(exc, "the previous out/x is unchanged")
    with pytest.raises(typer.Exit) as info:
        with user_errors():
            raise exc
    assert info.value.exit_code == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err.strip()
    assert err == "error: interrupted by SIGTERM; the previous out/x is unchanged (run the command again to finish)"


def test_sigterm_runs_the_cleanup_an_interrupt_runs(tmp_path):
    """start_cli turns SIGTERM into an exception, so the staged writer's cleanup runs."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        from qsched_export.cli.common import start_cli
        from runtimes.files import staged_dir
        start_cli()
        try:
            with staged_dir({str(tmp_path / "out")!r}) as staging:
                os.kill(os.getpid(), signal.SIGTERM)
                raise SystemExit("SIGTERM did not interrupt")
        except KeyboardInterrupt as exc:
            print(type(exc).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2], timeout=60)
    assert result.stdout.strip() == "Terminated", result.stderr
    assert _names(tmp_path) == []


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8\xff"), (".jpeg", b"\xff\xd8\xff"), (".webp", b"RIFF")])
def test_images_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    import numpy as np
    from PIL import features

    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")

    path = save_image(np.full((8, 8, 3), 200, np.uint8), tmp_path / f"x{suffix}")
    assert path.read_bytes().startswith(magic)


def test_an_unknown_image_suffix_lists_the_known_ones(tmp_path):
    import numpy as np

    with pytest.raises(OutputError, match=r"end the path in one of .png, .jpg, .jpeg, .webp"):
        save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.gif")
    assert _names(tmp_path) == []
