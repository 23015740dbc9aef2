"""Safe output writes: one mechanism for every file and folder qsched-export writes.

- `atomic_file(path)`: write beside `path`, then rename over it; an interrupted run leaves the
  previous file, never half of a new one.
- `staged_dir(out, overwrite)`: build a folder in a staging folder beside `out`; the block's body
  (the build *and* its checks) must finish before the staging folder replaces `out`, so a failed
  or interrupted build leaves the last good artifact as it was.
- `check_output_file(path)` / `check_output_folder(out, overwrite)`: the same rules, for a command
  to apply before any long work starts.
- `scratch_dir(parent, label)`: a working folder of our naming, removed on exit.
- `clean_stale(parent)`: removes what killed runs left beside their outputs (temp and trash of our
  naming whose owner is gone), and puts back an artifact that a kill left in the trash.

What is refused (one-line `OutputError`, never a silent replace): a symlink (it is not followed and
replaced), an existing path of the wrong kind (device node, FIFO, socket, a folder where a file
goes, a file where a folder goes), a path under a regular file, an unwritable place, a user's
output inside an artifact folder (one whose `manifest.json` qsched-export wrote) or a write over
an artifact's own files by anyone but the manifest writer, and `--overwrite` of anything but an
artifact folder or an empty folder, or of the working folder or an ancestor of it.

Temp and trash names are `.<name>.qsched-tmp-<pid>-<hex>` and `.<name>.qsched-old-<pid>-<hex>`.
The owner holds an exclusive `flock` on each while it lives; `clean_stale` touches only names of
that form whose pid is not running here *and* whose lock it can take, so it never removes what a
live process holds (the lock covers a pid reused after a kill, and a process in another pid
namespace sharing the folder).

POSIX only (fcntl, signal masks), like every machine the project targets. Torch-free: stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from runtimes.errors import UserError

_OWNED = re.compile(r"^\.(?P<name>.+)\.qsched-(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
# Failures of a write that say something about the place, not about our code: shown as one line.
_PLACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_MANIFEST = "manifest.json"  # runtimes.manifest.MANIFEST_NAME; that module imports this one


class OutputError(UserError):
    """An output path that cannot be written safely; the message says why and what to pass instead."""


# 1. what is at a path


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a parent is a file: nothing can exist here
        return None


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of `path` that exists (a folder unless `_check_parents` refuses it)."""
    for parent in Path(os.path.abspath(path)).parents:
        if _lstat(parent) is not None:
            return parent
    return Path("/")


def _check_parents(path: Path) -> None:
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {path}: {ancestor} is a file, not a folder", "choose a path whose parent is a folder")


def enclosing_artifact(path: str | Path) -> Path | None:
    """The artifact folder `path` lies in (its nearest ancestor that `is_artifact`), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / _MANIFEST).is_file() and is_artifact(folder):
            return folder
    return None


def is_artifact(folder: Path) -> bool:
    """Whether `folder` holds a manifest.json that qsched-export wrote (a JSON object with our
    `schema_version` and `files`): the only kind of non-empty folder `--overwrite` replaces."""
    try:
        data = json.loads((Path(folder) / _MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "files" in data


def _listed_in(root: Path, rel: str) -> bool:
    try:
        files = json.loads((root / _MANIFEST).read_bytes()).get("files")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(files, dict) and rel in files


def _probe_writable(folder: Path) -> None:
    """Create and remove a file of our naming in `folder`: the one test of writability that also
    holds for root, read-only mounts and pseudo-filesystems such as /proc."""
    probe = folder / _owned_name("write-probe", "tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror}", "choose a writable place for the output") from None


# 2. the checks a command runs before any work


def _refuse_link(path: Path, what: str) -> None:
    if os.path.islink(path):
        raise OutputError(f"{path} is a symbolic link; qsched-export does not follow and replace links",
                          f"pass the {what} it points to, or a new path")


def _refuse_non_file(path: Path) -> None:
    """A file output may replace a regular file only, never a link, device, FIFO, socket or folder;
    and it needs a folder to live in."""
    _refuse_link(path, "file")
    st = _lstat(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path} exists and is {_kind(st.st_mode)}, not a regular file", "pass a new file path, or a regular file to replace")
    _check_parents(path)


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work, a user's file output that cannot be written safely: a symlink, an
    existing path that is not a regular file, a path under a file, a path inside an artifact
    folder, an unwritable place. Then clear what killed runs of ours left beside it
    (`clean_stale`). Returns `path`."""
    path = Path(path)
    clean_stale(path.parent)
    _refuse_non_file(path)
    _check_place(path, "output file")
    return path


def check_output_folder(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output folder that cannot be written or replaced safely.

    `out` must not exist, or (with `overwrite`) be an empty folder or a qsched-export artifact
    folder that is neither the working folder nor an ancestor of it. It must not be a symlink, lie
    under a file or inside an artifact folder, and its place must be writable. What killed runs of
    ours left beside it is cleared first (`clean_stale`), so a trash folder a kill left is back in
    place before `out` is judged. Returns `out`."""
    out = Path(out)
    clean_stale(out.parent)
    _refuse_link(out, "folder")
    st = _lstat(out)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"output folder {out} exists and is {_kind(st.st_mode)}", "pass a new folder path for --out")
        if not overwrite:
            raise OutputError(f"output folder {out} already exists", "pass --overwrite to replace it, or another --out")
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if resolved == cwd or resolved in cwd.parents:
            raise OutputError(f"--overwrite would replace {out}, the working folder or one holding it", "pass a new folder for --out")
        with os.scandir(out) as entries:
            names = sorted(e.name for e in entries)
        if names and not is_artifact(out):
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise OutputError(f"--overwrite would delete {out}, which is not a qsched-export artifact (it holds {shown})",
                              "pass a new folder for --out; --overwrite replaces only an artifact folder or an empty one")
    _check_parents(out)
    _check_place(out, "output folder")
    return out


def _check_place(path: Path, what: str) -> None:
    """A user's output goes outside artifact folders, to a place this process can write."""
    root = enclosing_artifact(path)
    if root is not None:
        raise OutputError(f"{what} {path} is inside the artifact folder {root}", "write outputs outside artifact folders")
    _probe_writable(_existing_ancestor(path))


# 3. owned temp names, their locks, and the clean-up of killed runs


def _owned_name(name: str, kind: str) -> str:
    return f".{name}.qsched-{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def is_owned_temp(name: str) -> bool:
    """Whether a file or folder name is one of our temp or trash names (never part of an artifact)."""
    return _OWNED.match(name) is not None


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale(parent: str | Path) -> list[str]:
    """Remove the temp and trash folders and files of our naming in `parent` whose owner is gone
    (its pid is not running and its lock is free); a trash folder whose artifact has no
    replacement (a kill between the two renames of a swap) is renamed back instead. Returns one
    line per item handled. Never follows links; never touches a name of another form."""
    parent = Path(parent)
    done: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or entry.is_symlink() or _pid_running(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not _lock(fd):
                continue
            target = parent / match["name"]
            if match["kind"] == "old" and entry.is_dir() and _lstat(target) is None:
                os.rename(path, target)
                done.append(f"restored {target} from an interrupted replace")
            elif entry.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name} (left by process {match['pid']})")
            else:
                path.unlink(missing_ok=True)
                done.append(f"removed {path.name} (left by process {match['pid']})")
        except OSError:
            continue
        finally:
            os.close(fd)
    return done


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror}", "choose a writable place for the output") from None


@contextlib.contextmanager
def _owned_dir(parent: Path, name: str, kind: str) -> Iterator[tuple[Path, int]]:
    """Create `.<name>.qsched-<kind>-<pid>-<hex>` in `parent`, locked for the life of the block."""
    path = parent / _owned_name(name, kind)
    try:
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise OutputError(f"cannot write in {parent}: {exc.strerror}", "choose a writable place for the output") from None
    try:
        _lock(fd)
        yield path, fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def scratch_dir(parent: str | Path, label: str) -> Iterator[Path]:
    """A working folder of our naming in `parent` (created), removed when the block ends however it
    ends; a kill leaves it for `clean_stale`."""
    parent = Path(parent)
    _make_folder(parent)
    clean_stale(parent)
    with _owned_dir(parent, label, "tmp") as (path, _fd):
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


# 4. what an interrupted writer left, for the CLI's "interrupted; ..." line


def note_outcome(exc: BaseException, line: str) -> None:
    """Record on an interrupt what a writer left (e.g. "out/x is unchanged")."""
    if isinstance(exc, KeyboardInterrupt):
        exc.__dict__.setdefault("qsched_outcomes", []).append(line)


def outcomes(exc: BaseException) -> list[str]:
    return list(exc.__dict__.get("qsched_outcomes", []))


def _place_error(exc: OSError, target: Path) -> OutputError | None:
    """A write that failed for a reason of the place (disk full, quota, read-only) as one line."""
    if exc.errno in _PLACE_ERRNOS:
        return OutputError(f"writing {target} failed: {exc.strerror}", "free space or choose another place for the output")
    return None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few renames, so an interrupt lands before or after them."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# 5. the writers


def _check_file_target(path: Path, artifact_writer: bool) -> None:
    _refuse_non_file(path)
    root = enclosing_artifact(path)
    if root is not None and not artifact_writer:
        rel = Path(os.path.abspath(path)).relative_to(root).as_posix()
        if rel == _MANIFEST or _listed_in(root, rel):
            raise OutputError(f"{path} is part of the artifact {root}; replacing it would break the artifact",
                              "write outputs outside artifact folders")


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", *, artifact_writer: bool = False) -> Iterator[IO]:
    """Yield a temp file of our naming beside `path`; when the block ends without error, rename it
    over `path` (text modes write UTF-8).

    Refused with `OutputError`: a symlink, an existing path that is not a regular file, a path
    under a file, and, unless `artifact_writer` (the manifest writer), the `manifest.json` of an
    artifact folder or a file its manifest lists. A report such as parity.json may be written into
    an artifact; a user's `--out` is refused anywhere inside one earlier, by `check_output_file`."""
    path = Path(path)
    _check_file_target(path, artifact_writer)
    _make_folder(path.parent)
    clean_stale(path.parent)
    tmp = path.parent / _owned_name(path.name, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}", "choose a writable place for the output") from None
    existed = path.exists()
    try:
        _lock(fd)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o644)  # artifacts and images are meant to be shared, whatever the umask made
        _check_file_target(path, artifact_writer)  # again, just before replacing: it may have changed
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        note_outcome(exc, f"{path} is unchanged" if existed else f"{path} was not written")
        if isinstance(exc, OSError) and (error := _place_error(exc, path)) is not None:
            raise error from None
        raise


@contextlib.contextmanager
def staged_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; when the block finishes without error, the
    staging folder replaces `out` (two renames with SIGINT/SIGTERM held back). Anything raised in
    the block (a failed check, an interrupt) removes the staging folder and leaves `out` as it was.

    Put the checks that decide whether the result may replace `out` (parity) inside the block.
    `out` is checked first with `check_output_folder(out, overwrite)`, and again just before the
    swap. Raises `OutputError` for an output that cannot be written safely."""
    out = check_output_folder(out, overwrite)  # also clears what killed runs left beside it
    parent = out.parent
    _make_folder(parent)
    existed = _lstat(out) is not None
    with _owned_dir(parent, out.name, "tmp") as (staging, _fd):
        try:
            yield staging
            os.chmod(staging, 0o755)  # created private; an artifact is meant to be copied and shared
            _swap(staging, out, overwrite)
        except BaseException as exc:
            swapped = _lstat(staging) is None  # an interrupt can land after the swap, while the old copy is removed
            shutil.rmtree(staging, ignore_errors=True)
            note_outcome(exc, f"{out} is complete" if swapped else (f"the previous {out} is unchanged" if existed else f"{out} was not created"))
            if isinstance(exc, OSError) and (error := _place_error(exc, out)) is not None:
                raise error from None
            raise


def _swap(staging: Path, out: Path, overwrite: bool) -> None:
    """Put `staging` at `out`. An old `out` is renamed to a trash name first (its lock travels with
    it) and removed after; a kill between the two renames leaves it for `clean_stale` to put back."""
    check_output_folder(out, overwrite)
    if _lstat(out) is None:
        os.rename(staging, out)
        return
    trash = out.parent / _owned_name(out.name, "old")
    fd = os.open(out, os.O_RDONLY)
    try:
        _lock(fd)
        with _signals_held():
            os.rename(out, trash)
            os.rename(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        os.close(fd)
