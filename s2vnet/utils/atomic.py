"""Atomic file writes: nothing half-written is ever visible under the final name.

Every output of S2VNet (prepared volumes, predictions, reports, checkpoints written by us) goes
through :func:`atomic_path`: the caller writes to a temporary name in the destination folder,
which is renamed onto the final name only when the write finished without an exception.
``os.replace`` is atomic on POSIX within one file system, which the shared folder guarantees.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(final_path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it there on success.

    ``suffix`` is appended to the temporary name so that libraries which pick the format from
    the extension (nibabel, SimpleITK, matplotlib) see the right one, e.g. ``suffix=".nii.gz"``.
    On an exception the temporary file is removed and the final path is left untouched.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final_path.name}.", suffix=".tmp" + suffix, dir=final_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    # mkstemp creates the file 0600; give it the permissions an ordinary new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: PathLike, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON atomically (NaN and inf are written as JSON's NaN/Infinity)."""
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
