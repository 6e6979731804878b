"""Generic per-step checkpoints with orbax (V0 ``CheckpointManager`` API).

One *step* (a task, a growth phase, ...) is saved as two items:

* ``arrays``: any pytree of arrays, saved with ``ocp.args.StandardSave``;
* ``meta``: a JSON-serialisable dict (config, class order, widths, ...), saved
  with ``ocp.args.JsonSave``.

Restores are always *typed*: the caller gives an abstract target (a pytree of
``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``), so optax states come
back as their NamedTuples and a shape mismatch raises instead of silently
padding (we never pass ``strict=False``). Because shapes often depend on the
step (a network grows), :func:`restore_meta` reads the JSON part alone first so
that the caller can rebuild the abstract target.

Saves are waited for (``wait_until_finished``) before :func:`save_step`
returns; orbax writes into a temporary directory and renames it on commit, so a
process killed in the middle of a save never leaves a step that
:func:`completed_steps` would list.

Note: ``JsonSave`` turns int dict keys into strings (``{0: x}`` -> ``{"0": x}``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

ARRAYS = "arrays"
META = "meta"

_log = logging.getLogger(__name__)


def _manager(directory: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """Builds a synchronous-on-return manager over ``directory`` (created if missing)."""
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, exist_ok=True)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(directory, options=options, item_names=(ARRAYS, META))


def save_step(
    directory: str,
    step: int,
    arrays: PyTree,
    meta: Mapping[str, Any],
    *,
    max_to_keep: int | None = None,
) -> None:
    """Saves one completed step and waits until it is committed on disk.

    Args:
      directory: checkpoint root (one sub-directory per step is created).
      step: non-negative integer step id (e.g. the task index).
      arrays: pytree of arrays (jax or numpy); no strings.
      meta: JSON-serialisable dict. Int keys come back as strings.
      max_to_keep: keep only the newest N steps (None keeps all).

    Raises:
      ValueError: if ``step`` is negative or already saved.
    """
    if int(step) < 0:
        raise ValueError(f"step must be a non-negative integer, got {step}")
    mngr = _manager(directory, max_to_keep)
    try:
        if int(step) in mngr.all_steps():
            raise ValueError(
                f"step {step} already exists in {directory!r}; completed steps are immutable"
            )
        arrays = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), arrays)
        mngr.save(
            int(step),
            args=ocp.args.Composite(
                **{ARRAYS: ocp.args.StandardSave(arrays), META: ocp.args.JsonSave(dict(meta))}
            ),
            force=True,
        )
        mngr.wait_until_finished()
    finally:
        mngr.close()
    _log.info("saved checkpoint step %d in %s", step, directory)


def completed_steps(directory: str) -> list[int]:
    """Lists the committed steps in ``directory`` (empty if it does not exist).

    Args:
      directory: checkpoint root.

    Returns:
      Sorted step ids.
    """
    if not os.path.isdir(directory):
        return []
    mngr = _manager(directory)
    try:
        return sorted(int(s) for s in mngr.all_steps())
    finally:
        mngr.close()


def latest_step(directory: str) -> int | None:
    """Returns the newest committed step, or None when there is none."""
    steps = completed_steps(directory)
    return steps[-1] if steps else None


def _check_step(directory: str, step: int) -> None:
    steps = completed_steps(directory)
    if int(step) not in steps:
        raise ValueError(
            f"no completed checkpoint step {step} in {directory!r}; completed steps: {steps}"
        )


def restore_meta(directory: str, step: int) -> dict[str, Any]:
    """Restores only the JSON part of a step.

    Args:
      directory: checkpoint root.
      step: a committed step id.

    Returns:
      The dict given to :func:`save_step` (int keys turned into strings).
    """
    _check_step(directory, step)
    mngr = _manager(directory)
    try:
        out = mngr.restore(int(step), args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(out[META])
    finally:
        mngr.close()


def restore_step(directory: str, step: int, abstract_arrays: PyTree) -> tuple[PyTree, dict]:
    """Typed restore of one step.

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
      ValueError: if the step is missing or the target's shapes differ from the
        saved ones (orbax refuses to pad or truncate; we never allow it).
    """
    _check_step(directory, step)
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
            int(step),
            args=ocp.args.Composite(
                **{ARRAYS: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
            ),
        )
    except ValueError as e:  # orbax: "Truncating/padding is disabled ..."
        raise ValueError(
            f"checkpoint step {step} in {directory!r} does not match the requested "
            f"structure/shapes: {e}"
        ) from e
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
    return arrays, dict(out[META])


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
