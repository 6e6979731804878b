"""JSON files that are never half-written and errors that name the file.

:func:`write_json_atomic` writes a temporary file in the destination's folder, fsyncs it
and renames it over the destination, so a reader (or a process killed mid-write) sees
the old file or the new one, never a truncated one. :func:`read_json` turns a truncated
or damaged file into a ``ValueError`` that names it. :func:`canonical_json` is the
byte-stable form used for digests (sorted keys, no spaces).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

__all__ = ["canonical_json", "read_json", "write_json_atomic"]


def canonical_json(obj: Any) -> str:
    """``obj`` as JSON with sorted keys and no whitespace (equal objects, equal text).

    Args:
      obj: a JSON-serialisable object with string keys.

    Returns:
      The JSON text.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def write_json_atomic(path: str, obj: Any, *, indent: int | None = 1) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (temporary file, fsync, rename).

    Args:
      path: destination file (its folder must exist).
      obj: JSON-serialisable object (NaN is written as ``NaN``, as ``json`` does).
      indent: passed to ``json.dumps``.

    Raises:
      ValueError: if ``obj`` is not JSON-serialisable (nothing is written).
      OSError: naming ``path`` when its folder cannot be written.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        text = json.dumps(obj, indent=indent)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot write {path!r}: not JSON-serialisable ({err})") from err
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path!r}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(err.errno, f"cannot write {path!r}: {err.strerror}") from err
    try:  # make the rename durable too (best effort: not every platform allows it)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_json(path: str, *, what: str = "a JSON document") -> Any:
    """Reads a JSON file; a truncated or damaged one is a ``ValueError`` naming it.

    Args:
      path: the file.
      what: what the file should hold, for the error message.

    Returns:
      The decoded object.

    Raises:
      FileNotFoundError: naming ``path`` when it does not exist.
      ValueError: naming ``path`` and ``what`` when it is empty, truncated or not JSON.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(err.errno, f"{path!r} does not exist (expected {what})") from err
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path!r} is not valid JSON ({err}; the file has {len(raw)} bytes): expected "
            f"{what}; it is truncated or damaged"
        ) from err
