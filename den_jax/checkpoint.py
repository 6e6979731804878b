"""Verified per-step checkpoints with orbax (V0 ``CheckpointManager`` API, synchronous).

One *step* (a task, a growth phase, ...) is saved as two orbax items:

* ``arrays``: any pytree of arrays, saved with ``ocp.args.StandardSave``;
* ``meta``: a JSON-serialisable dict (config, class order, widths, ...), saved
  with ``ocp.args.JsonSave``.

**Digests.** After orbax has committed a step (written into a temporary directory
and renamed it), :func:`save_step` writes ``<step>/den_jax_digests.json``
atomically: the sha256 and size of every file of the step, the sha256 of every array
leaf (over its dtype, shape and bytes) and of the metadata as canonical JSON (sorted
keys). :func:`restore_step` and :func:`restore_meta` check the files first and the
restored values afterwards, and raise :class:`CorruptCheckpointError` (a
``ValueError``) naming the step and the file or leaf that differs. A step folder
without the digest record (empty, written by another program, or a process killed
between orbax's commit and the record) is not a completed step: :func:`completed_steps`
skips it with a warning, and :func:`save_step` moves it to ``<directory>.unusable/``
before writing that step again. :func:`verified_steps` and
:func:`latest_verified_step` hash everything and name what failed, so that a caller
resumes from the newest step that is intact.

Restores are always *typed*: the caller gives an abstract target (a pytree of
``jax.ShapeDtypeStruct``), so optax states come back as their NamedTuples and a shape
mismatch raises (we never pass ``strict=False``). :func:`restore_meta` reads the JSON
part alone first so that the caller can rebuild the target of a grown network.

Saves are synchronous (``enable_async_checkpointing=False``) and every manager is
closed before returning, so a failed save (e.g. a read-only folder) raises ``OSError``
naming the folder and leaves no background thread that would keep the process alive.

Note: ``JsonSave`` turns int dict keys into strings (``{0: x}`` -> ``{"0": x}``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from den_jax import digests
from den_jax.digests import DIGESTS, CorruptCheckpointError
from den_jax.jsonio import read_json, write_json_atomic

__all__ = [
    "ARRAYS",
    "DIGESTS",
    "META",
    "CorruptCheckpointError",
    "check_config_compatible",
    "completed_steps",
    "latest_step",
    "latest_verified_step",
    "move_aside_step",
    "read_json",
    "restore_meta",
    "restore_step",
    "save_step",
    "verified_steps",
    "verify_step",
    "write_json_atomic",
]

PyTree = Any

ARRAYS = "arrays"
META = "meta"

_log = logging.getLogger(__name__)


def verify_step(directory: str, step: int) -> None:
    """Checks every file of a step against its digest record (every byte is read).

    Args:
      directory: checkpoint root.
      step: step id.

    Raises:
      CorruptCheckpointError: naming the step and the first file that is missing,
        truncated or changed (or the missing/damaged record itself).
    """
    directory = os.path.abspath(os.fspath(directory))
    digests.verify_files(directory, int(step), digests.read_record(directory, int(step)))


# ----------------------------------------------------------------------------- steps


def _manager(directory: str, *, max_to_keep: int | None = None, write: bool = False):
    """A synchronous manager over ``directory``; the caller must ``close()`` it."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=write,
        cleanup_tmp_directories=write,
        read_only=not write,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(ARRAYS, META))


def move_aside_step(directory: str, step: int, reason: str) -> None:
    """Moves a step out of ``directory`` into ``<directory>.unusable/`` (kept, never reused)."""
    aside = directory.rstrip(os.sep) + ".unusable"
    os.makedirs(aside, exist_ok=True)
    dest = os.path.join(aside, f"{step}.{time.time_ns()}")
    shutil.move(digests.step_dir(directory, step), dest)
    _log.warning("checkpoint step %d in %s (%s) moved to %s", step, directory, reason, dest)


def save_step(
    directory: str,
    step: int,
    arrays: PyTree,
    meta: Mapping[str, Any],
    *,
    max_to_keep: int | None = None,
) -> None:
    """Saves one completed step, waits until it is committed and records its digests.

    Args:
      directory: checkpoint root (one sub-directory per step is created).
      step: non-negative integer step id (e.g. the task index).
      arrays: pytree of arrays (jax or numpy); no strings.
      meta: JSON-serialisable dict. Int keys come back as strings.
      max_to_keep: keep only the newest N steps (None keeps all).

    Raises:
      ValueError: if ``step`` is negative or already saved (and verifies).
      OSError: naming the folder when it cannot be written (read-only, full, ...).
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    directory = os.path.abspath(os.fspath(directory))
    arrays = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), arrays)
    try:  # what JsonSave will store and restore
        meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint step {step}: meta is not JSON-serialisable ({err})") from err
    if os.path.exists(digests.step_dir(directory, step)):
        try:
            verify_step(directory, step)
        except CorruptCheckpointError as err:
            move_aside_step(directory, step, f"does not verify: {err}")
        else:
            raise ValueError(
                f"step {step} already exists in {directory!r}; completed steps are immutable"
            )
    try:
        os.makedirs(directory, exist_ok=True)
        mngr = _manager(directory, max_to_keep=max_to_keep, write=True)
        try:
            mngr.save(
                step,
                args=ocp.args.Composite(
                    **{ARRAYS: ocp.args.StandardSave(arrays), META: ocp.args.JsonSave(meta)}
                ),
                force=True,
            )
            mngr.wait_until_finished()
        finally:
            mngr.close()
        digests.write_record(directory, step, arrays, meta)
    except OSError as err:
        raise OSError(
            err.errno, f"could not save checkpoint step {step} in {directory!r}: {err}"
        ) from err
    _log.info("saved checkpoint step %d in %s", step, directory)


def completed_steps(directory: str) -> list[int]:
    """Lists the committed steps that carry a digest record (empty if no ``directory``).

    Step folders without a record (empty, unfinished, foreign) are skipped with a warning.
    Orbax's temporary folders (``<step>.orbax-checkpoint-tmp-*``) are never listed.

    Args:
      directory: checkpoint root.

    Returns:
      Sorted step ids.
    """
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        if not (name.isdigit() and os.path.isdir(os.path.join(directory, name))):
            continue
        if os.path.isfile(os.path.join(directory, name, DIGESTS)):
            steps.append(int(name))
        else:
            _log.warning(
                "ignoring checkpoint folder %s: no %s (an empty or unfinished step)",
                os.path.join(directory, name),
                DIGESTS,
            )
    return sorted(steps)


def latest_step(directory: str) -> int | None:
    """Returns the newest completed step (not verified; see :func:`latest_verified_step`)."""
    steps = completed_steps(directory)
    return steps[-1] if steps else None


def verified_steps(directory: str) -> list[int]:
    """The completed steps whose files all match their digests (every byte is read).

    A step that fails is logged (warning) with the step and the file that differs.
    """
    good = []
    for s in completed_steps(directory):
        try:
            verify_step(directory, s)
            good.append(s)
        except CorruptCheckpointError as err:
            _log.warning("%s", err)
    return good


def latest_verified_step(directory: str) -> int | None:
    """The newest completed step that verifies (None if none does); failures are logged."""
    for s in reversed(completed_steps(directory)):
        try:
            verify_step(directory, s)
            return s
        except CorruptCheckpointError as err:
            _log.warning("%s; trying an older step", err)
    return None


def _check_step(directory: str, step: int) -> dict:
    if not os.path.isdir(digests.step_dir(directory, step)):
        raise ValueError(
            f"no completed checkpoint step {step} in {directory!r}; completed steps: "
            f"{completed_steps(directory)}"
        )
    return digests.read_record(directory, step)


def restore_meta(directory: str, step: int) -> dict[str, Any]:
    """Restores only the JSON part of a step (its files and value verified).

    Args:
      directory: checkpoint root.
      step: a committed step id.

    Returns:
      The dict given to :func:`save_step` (int keys turned into strings).

    Raises:
      ValueError: if the step does not exist.
      CorruptCheckpointError: if the metadata does not match its digests.
    """
    directory, step = os.path.abspath(os.fspath(directory)), int(step)
    rec = _check_step(directory, step)
    digests.verify_files(directory, step, rec, (META,))
    mngr = _manager(directory)
    try:
        out = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
    except (ValueError, KeyError, OSError) as err:
        raise CorruptCheckpointError(directory, step, f"{META}/", f"unreadable: {err!r}") from err
    finally:
        mngr.close()
    meta = dict(out[META])
    digests.check_meta(directory, step, rec, meta)
    return meta


def restore_step(directory: str, step: int, abstract_arrays: PyTree) -> tuple[PyTree, dict]:
    """Typed, verified restore of one step.

    Args:
      directory: checkpoint root.
      step: a committed step id.
      abstract_arrays: pytree with the structure, shapes and dtypes to restore
        into, e.g. ``jax.eval_shape(init_fn, ...)`` or a tree of
        ``jax.ShapeDtypeStruct``; concrete arrays are accepted too.

    Returns:
      ``(arrays, meta)``: numpy arrays with the target's structure (NamedTuples
      kept; values cast to the target's dtypes), and the JSON dict.

    Raises:
      ValueError: if the step is missing or the target's structure or shapes differ
        from the saved ones (orbax refuses to pad or truncate; we never allow it).
      CorruptCheckpointError: if a file, an array leaf (compared when the target keeps
        the saved dtype) or the metadata does not match its digest.
    """
    directory, step = os.path.abspath(os.fspath(directory)), int(step)
    rec = _check_step(directory, step)
    digests.verify_files(directory, step, rec)
    target = jax.tree.map(
        lambda x: (
            x
            if isinstance(x, jax.ShapeDtypeStruct)
            else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        ),
        abstract_arrays,
    )
    mngr = _manager(directory)
    try:
        out = mngr.restore(
            step,
            args=ocp.args.Composite(
                **{ARRAYS: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
            ),
        )
    except ValueError as e:  # orbax: "Truncating/padding is disabled ..."
        raise ValueError(
            f"checkpoint step {step} in {directory!r} does not match the requested "
            f"structure/shapes: {e}"
        ) from e
    except (KeyError, OSError) as err:
        raise CorruptCheckpointError(directory, step, f"{ARRAYS}/", f"unreadable: {err!r}") from err
    finally:
        mngr.close()
    arrays = out[ARRAYS]
    # Orbax restores numpy leaves without checking shapes when the target has
    # no sharding, so we check structure and shapes ourselves.
    t_leaves, t_def = jax.tree.flatten(target)
    a_leaves, a_def = jax.tree.flatten(arrays)
    if t_def != a_def:
        raise ValueError(
            f"checkpoint step {step} in {directory!r} has structure {a_def}, expected {t_def}"
        )
    bad = [
        f"{jax.tree_util.keystr(path)}: saved {np.shape(a)} {np.asarray(a).dtype}, "
        f"expected {t.shape} {t.dtype}"
        for (path, t), a in zip(jax.tree_util.tree_flatten_with_path(target)[0], a_leaves)
        if tuple(np.shape(a)) != tuple(t.shape)
    ]
    if bad:
        raise ValueError(
            f"checkpoint step {step} in {directory!r} does not match the requested shapes: "
            + "; ".join(bad)
        )
    digests.check_leaves(directory, step, rec, arrays)
    meta = dict(out[META])
    digests.check_meta(directory, step, rec, meta)
    return arrays, meta


def check_config_compatible(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    ignore: Sequence[str] = (),
) -> None:
    """Refuses to resume with a different config.

    Values are compared after a JSON-like normalisation (tuples as lists, int
    keys as strings), so a config that went through ``JsonSave`` compares equal
    to the in-memory one it came from.

    Args:
      saved: config stored with the checkpoint.
      current: config of the run that wants to resume.
      ignore: keys allowed to differ (e.g. ``"resume"``, ``"out"``).

    Raises:
      ValueError: naming every differing key with both values.
    """

    def norm(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    a, b = norm(saved), norm(current)
    keys = sorted((set(a) | set(b)) - set(ignore))
    diffs = [
        f"{k}: saved={a.get(k, '<missing>')!r} current={b.get(k, '<missing>')!r}"
        for k in keys
        if a.get(k, "<missing>") != b.get(k, "<missing>")
    ]
    if diffs:
        raise ValueError(
            "refusing to resume: the checkpoint was written with a different config "
            "(start a new --out directory or use the saved values). Differing keys: "
            + "; ".join(diffs)
        )
