"""Atomic file writes: nothing half-written is ever visible under the final name.

Every output of S2VNet (prepared volumes, predictions, reports, checkpoints written by us) goes
through :func:`atomic_path` (files) or :func:`atomic_directory` (the prepare step's case
folders): the caller writes to a temporary name in the destination folder, which is renamed onto
the final name only when the write finished without an exception. ``os.replace`` is atomic on
POSIX within one file system, which the shared folder guarantees.

A process killed during a write (SIGKILL, power loss) cannot remove its temporary, so temporaries
carry their writer's host and pid in their name::

    .<final name>.<host>-<pid>.<random>.tmp<suffix>

and the next write of the same final name removes the ones whose writer is gone: same host and
that pid no longer running. Temporaries of other hosts (a shared file system) are left alone, as
their writer cannot be checked from here. Temporaries in the older naming without host and pid
(``.<final name>.<random>.tmp<suffix>``, and the prepare step's ``.<case>.<random>/``) are
removed once untouched for :data:`LEGACY_TEMPORARY_AGE_S`.
"""
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Temporaries without an owner in their name (written before owners were recorded) are taken
#: for abandoned once unmodified this long: every write updates its file's mtime.
LEGACY_TEMPORARY_AGE_S = 3600.0

# Host names may hold dots, which would make the temporary's name ambiguous: keep [A-Za-z0-9-].
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
# What follows ".<final name>." in a temporary's name, before ".tmp<suffix>".
_OWNED = re.compile(r"(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+")
_LEGACY = re.compile(r"[a-z0-9_]{8}")  # tempfile's random part, the old naming


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _temporary_prefix(final_path: Path) -> str:
    return f".{final_path.name}.{_HOST}-{os.getpid()}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _is_abandoned(path: Path, owner: str) -> bool:
    """Whether the temporary ``path``, whose name holds ``owner`` (host-pid.random or the old
    random part), can no longer be written by anyone."""
    owned = _OWNED.fullmatch(owner)
    if owned:
        return owned["host"] == _HOST and not _process_alive(int(owned["pid"]))
    if _LEGACY.fullmatch(owner):
        return time.time() - path.lstat().st_mtime > LEGACY_TEMPORARY_AGE_S
    return False  # not a name we make


def _owner_part(path: Path, final_name: str, suffix: str) -> Optional[str]:
    """The part of a temporary's name between ".<final name>." and ".tmp<suffix>" (None if
    ``path`` is not a temporary of ``final_name``)."""
    head, tail = f".{final_name}.", f".tmp{suffix}"
    if not path.name.startswith(head):
        return None
    rest = path.name[len(head) :]
    if rest.endswith(tail):
        return rest[: len(rest) - len(tail)]
    # The prepare step's case folders were once named without ".tmp": ".<case>.<random>".
    return rest if _LEGACY.fullmatch(rest) and path.is_dir() else None


def remove_stale_temporaries(final_path: PathLike, suffix: str = "") -> int:
    """Remove the temporaries that killed writers of ``final_path`` left beside it; return how many.

    Only names :func:`atomic_path` / :func:`atomic_directory` make for this final name and this
    ``suffix`` are considered, and only those whose writer is gone (see the module docstring).
    """
    final_path = Path(final_path)
    try:
        entries = list(final_path.parent.iterdir())
    except FileNotFoundError:
        return 0
    removed = 0
    for path in entries:
        owner = _owner_part(path, final_path.name, suffix)
        try:
            if owner is None or not _is_abandoned(path, owner):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # removed meanwhile by another re-run
            continue
        except OSError as error:  # e.g. no permission: not a reason to fail the write itself
            logger.warning("could not remove %s, left behind by an interrupted write: %s", path, error)
            continue
        logger.info("removed %s, left behind by an interrupted write", path)
        removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(final_path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it there on success.

    ``suffix`` is appended to the temporary name so that libraries which pick the format from
    the extension (nibabel, SimpleITK, matplotlib) see the right one, e.g. ``suffix=".nii.gz"``.
    On an exception the temporary file is removed and the final path is left untouched.
    Temporaries of earlier writes of ``final_path`` that were killed are removed first.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_path, suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(final_path), suffix=".tmp" + suffix, dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    # mkstemp creates the file 0600; give it the permissions an ordinary new file would get.
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, final_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_directory(final_dir: PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``final_dir``; on success it replaces ``final_dir``.

    An existing ``final_dir`` (an outdated version) is removed just before the rename. On an
    exception the temporary folder is removed and ``final_dir`` is left untouched. The folder
    gets the umask's ordinary permissions, not mkdtemp's 0700.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final_dir)
    tmp_dir = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final_dir), suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp_dir, 0o777 & ~_umask())
    try:
        yield tmp_dir
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(tmp_dir, final_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: PathLike, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON atomically (NaN and inf are written as JSON's NaN/Infinity)."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
