"""Digest records of checkpoint steps: what was written, checked before it is trusted.

A record (``<step>/den_jax_digests.json``, written atomically after orbax's commit)
holds the sha256 and size of every file of the step, the sha256 of every array leaf
(over its dtype, shape and C-order bytes) and the sha256 of the metadata as canonical
JSON. :func:`verify_files` re-hashes the files; :func:`check_leaves` and
:func:`check_meta` compare restored values. Every mismatch is a
:class:`CorruptCheckpointError` naming the step and the file or leaf.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from den_jax.jsonio import canonical_json, read_json, write_json_atomic

__all__ = [
    "DIGESTS",
    "CorruptCheckpointError",
    "check_leaves",
    "check_meta",
    "leaf_digests",
    "meta_digest",
    "read_record",
    "step_dir",
    "verify_files",
    "write_record",
]

DIGESTS = "den_jax_digests.json"
FORMAT = "den_jax.checkpoint digests v1"


class CorruptCheckpointError(ValueError):
    """A checkpoint step that does not match the digests recorded when it was written.

    Attributes:
      directory: the checkpoint root.
      step: the step id.
      path: the file (relative to the step folder) or array leaf that differs.
    """

    def __init__(self, directory: str, step: int, path: str, problem: str):
        self.directory, self.step, self.path = directory, int(step), path
        super().__init__(f"checkpoint step {step} in {directory!r} is corrupt: {path}: {problem}")


def step_dir(directory: str, step: int) -> str:
    """The folder of ``step`` under the checkpoint root (orbax's default naming)."""
    return os.path.join(directory, str(int(step)))


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: str) -> dict[str, dict]:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            if rel != DIGESTS:
                out[rel] = {"sha256": _file_sha(full), "bytes": os.path.getsize(full)}
    return dict(sorted(out.items()))


def leaf_digests(tree: Any) -> dict[str, dict]:
    """``{keystr(path): {"dtype", "shape", "sha256"}}`` for every array leaf of ``tree``."""
    out = {}
    for path, a in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(a))
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        out[jax.tree_util.keystr(path)] = {
            "dtype": a.dtype.str,
            "shape": list(a.shape),
            "sha256": h.hexdigest(),
        }
    return out


def meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``meta`` (string keys, as JSON stores them)."""
    return hashlib.sha256(canonical_json(meta).encode()).hexdigest()


def write_record(directory: str, step: int, arrays: Any, meta: Mapping[str, Any]) -> None:
    """Hashes the committed step folder and writes its record atomically inside it."""
    folder = step_dir(directory, step)
    record = {
        "format": FORMAT,
        "step": int(step),
        "files": _files(folder),
        "leaves": leaf_digests(arrays),
        "meta_sha256": meta_digest(meta),
    }
    write_json_atomic(os.path.join(folder, DIGESTS), record, indent=None)


def read_record(directory: str, step: int) -> dict:
    """Reads the record of a step.

    Raises:
      CorruptCheckpointError: if the step folder or its record is missing or damaged.
    """
    folder = step_dir(directory, step)
    if not os.path.isdir(folder):
        raise CorruptCheckpointError(directory, step, str(step), "the step folder is missing")
    path = os.path.join(folder, DIGESTS)
    if not os.path.exists(path):
        raise CorruptCheckpointError(
            directory, step, DIGESTS, "no digest record (an empty or unfinished step folder)"
        )
    try:
        rec = read_json(path, what="the step's digest record")
    except ValueError as err:
        raise CorruptCheckpointError(directory, step, DIGESTS, str(err)) from err
    keys = ("files", "leaves", "meta_sha256")
    if not (
        isinstance(rec, dict)
        and rec.get("format") == FORMAT
        and rec.get("step") == int(step)
        and all(k in rec for k in keys)
    ):
        raise CorruptCheckpointError(directory, step, DIGESTS, f"not a {FORMAT!r} record")
    return rec


def verify_files(
    directory: str, step: int, rec: Mapping[str, Any], items: Sequence[str] | None = None
) -> None:
    """Re-hashes the files of a step (only those of ``items`` plus top-level ones if given).

    Raises:
      CorruptCheckpointError: naming the first file that is missing, resized or changed.
    """
    folder = step_dir(directory, step)
    for rel, want in rec["files"].items():
        top = rel.split("/", 1)[0] if "/" in rel else None
        if items is not None and top is not None and top not in items:
            continue
        full = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(full):
            raise CorruptCheckpointError(directory, step, rel, "file is missing")
        size = os.path.getsize(full)
        if size != want["bytes"]:
            raise CorruptCheckpointError(
                directory, step, rel, f"{size} bytes, {want['bytes']} were written"
            )
        if _file_sha(full) != want["sha256"]:
            raise CorruptCheckpointError(directory, step, rel, "sha256 differs from the record")


def check_leaves(directory: str, step: int, rec: Mapping[str, Any], arrays: Any) -> None:
    """Compares restored leaves with the record (leaves cast to another dtype are skipped).

    Raises:
      CorruptCheckpointError: naming the first leaf whose values differ or that was not saved.
    """
    saved = rec["leaves"]
    for name, got in leaf_digests(arrays).items():
        want = saved.get(name)
        if want is None:
            raise CorruptCheckpointError(directory, step, f"arrays{name}", "leaf not recorded")
        if want["dtype"] == got["dtype"] and want["sha256"] != got["sha256"]:
            raise CorruptCheckpointError(directory, step, f"arrays{name}", "values differ")


def check_meta(directory: str, step: int, rec: Mapping[str, Any], meta: Mapping) -> None:
    """Compares restored metadata with the record.

    Raises:
      CorruptCheckpointError: if it differs.
    """
    if meta_digest(meta) != rec["meta_sha256"]:
        raise CorruptCheckpointError(
            directory, step, "meta/metadata", "metadata differs from the record"
        )
