"""The one way fibpolicy writes a file or directory: build it under a temporary name, then rename it.

A reader (or a resumed run) therefore sees either the old complete object or the new complete one,
never a half-written one, whatever moment a process is killed at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "clean_orphans", "point_link", "temporary_name", "write_json", "write_text"]

# Every temporary this project writes is named ``.<name>.<kind>-<pid>-<8 hex>[suffix]`` (kind: ``tmp`` for a
# file being built, ``old`` for a replaced directory moved aside, ``build`` for a store being assembled);
# the pid lets a later process tell a dead writer's leftovers from a live writer's work.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|build)-(?P<pid>\d+)(?:-[0-9a-f]{8})?(?:\..*)?$")


def temporary_name(path: str | os.PathLike, kind: str = "tmp", suffix: str = "") -> Path:
    """A fresh hidden sibling of ``path`` named so that :func:`clean_orphans` recognises it."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _fsync_tree(path: Path) -> None:
    # Data must be on disk before the rename that publishes it, or a power cut can publish an empty file.
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True, suffix: str = "") -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path``; when the block succeeds, move it onto ``path``.

    The caller creates a file or a directory at the yielded path. On an exception it is deleted and
    ``path`` is untouched. An existing ``path`` is replaced only with ``overwrite`` (else
    ``FileExistsError``, naming it); an existing directory is first renamed aside, so a crash between
    the two renames leaves the old copy under ``.<name>.old-*`` rather than nothing. ``suffix`` is
    appended to the temporary name (for writers that pick a format from the extension, e.g. ``.mp4``).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, "tmp", suffix)
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to the temporary {tmp} for {path}")
        _fsync_tree(tmp)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} appeared while it was being written; not overwriting it")
        if path.is_dir() and not path.is_symlink():
            old = temporary_name(path, "old")
            path.rename(old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    return write_text(path, json.dumps(obj, indent=indent))


def point_link(link: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Make the symlink ``link`` point at ``target`` (a sibling name) with one rename: never zero links.

    A real directory at ``link`` (written before it became a link) is moved aside first, as
    :func:`atomic_path` does, and removed once the link is in place.
    """
    link = Path(link)
    aside = None
    if link.is_dir() and not link.is_symlink():
        aside = temporary_name(link, "old")
        link.rename(aside)
    tmp = temporary_name(link, "tmp")
    os.symlink(os.fspath(target), tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(link.parent)
    if aside is not None:
        _remove(aside)
    return link


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean_orphans(directory: str | os.PathLike) -> list[tuple[Path, str, int]]:
    """Remove the temporaries in ``directory`` whose writing process is gone; returns (path, action, bytes).

    A directory moved aside (``old``) whose original name no longer exists is the only copy left by a
    crash between the two renames of :func:`atomic_path`: it is restored instead of deleted.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for entry in sorted(directory.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if match is None or _pid_alive(int(match["pid"])):
            continue
        original = directory / match["name"]
        size = _size(entry)
        if match["kind"] == "old" and not (original.exists() or original.is_symlink()):
            os.replace(entry, original)
            done.append((original, "restored", size))
        else:
            _remove(entry)
            done.append((entry, "removed", size))
    return done
