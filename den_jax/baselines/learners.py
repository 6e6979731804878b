"""Baseline learners: separate networks (STL), fine-tuning, L2 transfer and EWC.

Every learner has DEN's call shape::

    net, report = learn_task(net, key, task, train, valid, cfg, *, state=None, loss=None,
                             optimizer=None)

``net`` already holds ``task`` (the runner adds the task's heads first); ``train`` and
``valid`` are ``(x, y)`` pairs or iterables of ``(x_batch, y_batch)``
(:func:`den_jax.training.as_arrays`; ``valid`` may be ``None``); ``cfg`` is a
:class:`BaselineConfig`. ``loss`` is ``(logits, y) -> scalar`` (default ``cfg.loss``);
``optimizer`` an ``optax.GradientTransformation`` or a factory ``schedule -> tx``
(default Adam on ``cfg.schedule``). ``report`` is a
JSON-friendly dict with the per-task summary (``phase``, ``loss``, ``units_added``,
``split``, ``pruned``, ``valid_loss``) plus ``report["state"]``: a pytree of arrays to
pass as ``state=`` when learning the next task (``None`` for the stateless learners).

* STL (``stl``): the runner gives each task a fresh network; all of it is trained.
* Fine-tuning (``finetune``): shared layers + the task's heads, no regulariser.
* L2 transfer (``l2``): fine-tuning + ``lam/2 * ||theta_s - theta_s^{t-1}||^2`` on the
  shared parameters ``theta_s`` (DEN's "DNN-L2" baseline, Yoon et al. 2018 §4).
* EWC (``ewc``): fine-tuning + ``lam/2 * sum_i F_i (theta_i - theta*_i)^2`` (Kirkpatrick
  et al. 2017, Eq. 3) with ``F`` the diagonal Fisher of the model's own predictive
  distribution (by default the exact expectation over the task's classes; optionally one
  sampled label per example, or each task's Fisher normalised to mean 1), summed over past
  tasks and anchored at the parameters after the latest task (the single-penalty "online
  EWC" form, gamma = 1, Schwarz et al. 2018, Eq. 8; Huszar 2018).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.baselines.common import (
    FISHER_ESTIMATORS,
    FISHER_NORMS,
    check_task_data,
    shared_params,
    train_task,
    validation_loss,
)
from den_jax.network import SHARED_INPUT, ExpandableNet, apply, resolve_task

__all__ = [
    "BASELINES",
    "Method",
    "diagonal_fisher",
    "ewc_learn_task",
    "ewc_state_abstract",
    "finetune_learn_task",
    "l2_learn_task",
    "normalise_fisher",
    "stl_learn_task",
]

Data = tuple[Any, Any]


def _report(net, task, valid, cfg, train_report, phase, state=None, loss=None) -> dict:
    return {
        "phase": phase,
        "loss": train_report["loss_last"],
        "loss_first": train_report["loss_first"],
        "steps": train_report["steps"],
        "units_added": 0,
        "split": 0,
        "pruned": 0,
        "valid_loss": validation_loss(net, task, valid, cfg, loss=loss),
        "state": state,
    }


def stl_learn_task(
    net, key, task, train: Data, valid: Data | None, cfg, *, state=None, loss=None, optimizer=None
):
    """STL: trains a separate network for ``task`` (``net`` should hold only this task)."""
    train, valid = check_task_data(net, task, cfg, train, valid)
    if len(net.task_names) != 1:
        raise ValueError(
            f"STL trains one network per task; got a network with tasks {list(net.task_names)}"
        )
    net, rep = train_task(net, key, task, train, cfg, loss=loss, optimizer=optimizer, method="stl")
    return net, _report(net, task, valid, cfg, rep, "stl", loss=loss)


def finetune_learn_task(
    net, key, task, train: Data, valid: Data | None, cfg, *, state=None, loss=None, optimizer=None
):
    """Fine-tuning: shared layers and the task's heads, no regulariser."""
    train, valid = check_task_data(net, task, cfg, train, valid)
    net, rep = train_task(
        net, key, task, train, cfg, loss=loss, optimizer=optimizer, method="finetune"
    )
    return net, _report(net, task, valid, cfg, rep, "finetune", loss=loss)


def _l2_penalty(lam: float):
    def penalty(shared, prev):
        sq = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), shared, prev)
        return 0.5 * lam * sum(jax.tree.leaves(sq))

    return penalty


def l2_learn_task(
    net, key, task, train: Data, valid: Data | None, cfg, *, state=None, loss=None, optimizer=None
):
    """L2 transfer: pulls the shared parameters toward their values before this task."""
    train, valid = check_task_data(net, task, cfg, train, valid)
    first = resolve_task(net.meta, task).index == 0
    prev = shared_params(net.params)
    penalty = None if first else _l2_penalty(cfg.l2_lambda)
    net, rep = train_task(
        net, key, task, train, cfg, penalty=penalty, aux=prev, loss=loss, optimizer=optimizer,
        method="l2",
    )  # fmt: skip
    return net, _report(net, task, valid, cfg, rep, "l2", loss=loss)


def _ewc_penalty(lam: float):
    def penalty(shared, aux):
        terms = jax.tree.map(
            lambda p, a, f: jnp.sum(f * (p - a) ** 2), shared, aux["anchor"], aux["fisher"]
        )
        return 0.5 * lam * sum(jax.tree.leaves(terms))

    return penalty


def diagonal_fisher(
    net: ExpandableNet,
    key: jax.Array,
    task: str,
    x: Any,
    *,
    num_samples: int,
    chunk: int = 128,
    estimator: str = "exact",
    likelihood: str = "softmax",
) -> dict:
    """Diagonal Fisher of ``task``'s predictive distribution w.r.t. the shared parameters.

    ``F_i = E_x E_{y ~ p(y|x)} [ (d log p(y|x) / d theta_i)^2 ]`` on the first
    ``num_samples`` rows of ``x``. ``estimator="exact"`` takes the inner expectation over
    every class, ``sum_c p(c|x) (d log p(c|x) / d theta)^2``; ``"sample"`` draws one label
    per row from ``p(y|x)``. On a confident model (``1 - max p`` around 1e-4, as after long
    training on a two-class task) a sampled wrong label is rare, so the sampled estimate is
    zero on most rows and jumps by orders of magnitude between draws; the exact one does not.

    Args:
      net: the network after training ``task``.
      key: PRNG key (only ``estimator="sample"`` uses it).
      task: the task whose head defines ``p(y|x)``.
      x: inputs ``[N, d]``.
      num_samples: rows of ``x`` used.
      chunk: rows per compiled batch.
      estimator: ``"exact"`` or ``"sample"`` (softmax only).
      likelihood: ``"softmax"`` (categorical over the logits) or ``"sigmoid"`` (one
        Bernoulli per logit, the model of the per-class sigmoid cross-entropy: the exact
        Fisher is ``sum_c s_c (1 - s_c) (d z_c / d theta)^2``).

    Returns:
      A tree shaped like :func:`shared_params`: the mean over rows.
    """
    if estimator not in FISHER_ESTIMATORS:
        raise ValueError(f"Fisher estimator must be one of {FISHER_ESTIMATORS}, got {estimator!r}")
    if likelihood not in ("softmax", "sigmoid"):
        raise ValueError(f"Fisher likelihood must be 'softmax' or 'sigmoid', got {likelihood!r}")
    if estimator == "sample" and likelihood != "softmax":
        raise ValueError("Fisher estimator 'sample' supports likelihood='softmax' only")
    meta = net.meta
    x = jnp.asarray(x)[:num_samples]
    n = int(x.shape[0])
    if n == 0:
        raise ValueError(f"Fisher of task {task!r}: no input rows")
    num_classes = resolve_task(meta, task).output_dim

    def merge(shared, rest):
        params = {**rest, "hidden": shared["hidden"]}
        if shared["input"]:
            params["input_heads"] = {**rest["input_heads"], SHARED_INPUT: shared["input"]}
        return ExpandableNet(params=params, meta=meta)

    def score(shared, rest, xi, c):
        """The per-class quantity whose squared gradient, weighted, makes the Fisher."""
        logits = apply(merge(shared, rest), xi[None], task)[0]
        if likelihood == "sigmoid":
            return logits[c]
        return jax.nn.log_softmax(logits)[c]

    per_example = jax.vmap(jax.grad(score), in_axes=(None, None, 0, 0))

    def squared(shared, rest, xb, c, w):
        g = per_example(shared, rest, xb, c)
        return jax.tree.map(lambda v: jnp.tensordot(w, v**2, axes=1), g)

    @jax.jit
    def chunk_sum(shared, rest, xb, k):
        logits = apply(merge(shared, rest), xb, task)
        if estimator == "sample":
            yb = jax.random.categorical(k, logits)
            return squared(shared, rest, xb, yb, jnp.ones(xb.shape[0]))
        probs = jax.nn.sigmoid(logits) if likelihood == "sigmoid" else jax.nn.softmax(logits)
        weights = probs * (1.0 - probs) if likelihood == "sigmoid" else probs

        def body(acc, c):
            cb = jnp.full((xb.shape[0],), c, jnp.int32)
            part = squared(shared, rest, xb, cb, jax.lax.stop_gradient(weights[:, c]))
            return jax.tree.map(jnp.add, acc, part), None

        zero = jax.tree.map(jnp.zeros_like, shared)
        total, _ = jax.lax.scan(body, zero, jnp.arange(num_classes))
        return total

    shared = shared_params(net.params)
    total = jax.tree.map(jnp.zeros_like, shared)
    for i, start in enumerate(range(0, n, chunk)):
        part = chunk_sum(shared, net.params, x[start : start + chunk], jax.random.fold_in(key, i))
        total = jax.tree.map(jnp.add, total, part)
    return jax.tree.map(lambda v: v / n, total)


def normalise_fisher(fisher: dict, how: str) -> dict:
    """``fisher`` scaled as ``how`` says: ``"none"`` or ``"mean"`` (divided by its mean entry).

    With ``"mean"`` a task's Fisher has mean 1 over the shared parameters, so
    ``ewc_lambda`` is on the scale of L2 transfer's ``l2_lambda`` (L2 is EWC with F = 1)
    whatever the model's confidence; an all-zero Fisher stays zero.

    Args:
      fisher: a tree of non-negative arrays.
      how: one of :data:`FISHER_NORMS`.

    Returns:
      A tree like ``fisher``.
    """
    if how not in FISHER_NORMS:
        raise ValueError(f"Fisher normalisation must be one of {FISHER_NORMS}, got {how!r}")
    if how == "none":
        return fisher
    leaves = jax.tree.leaves(fisher)
    size = sum(int(np.prod(v.shape)) for v in leaves)
    mean = sum(jnp.sum(v) for v in leaves) / max(size, 1)
    scale = jnp.where(mean > 0, 1.0 / jnp.where(mean > 0, mean, 1.0), 0.0)
    return jax.tree.map(lambda v: v * scale, fisher)


def ewc_learn_task(
    net, key, task, train: Data, valid: Data | None, cfg, *, state=None, loss=None, optimizer=None
):
    """EWC: quadratic penalty weighted by the summed Fisher of the previous tasks.

    ``state`` is ``None`` before the first task, then ``{"anchor", "fisher"}`` (trees like
    :func:`shared_params`) as returned in the previous report.
    """
    train, valid = check_task_data(net, task, cfg, train, valid)
    k_train, k_fisher = jax.random.split(key)
    opts = dict(loss=loss, optimizer=optimizer, method="ewc")
    if state is None:
        net, rep = train_task(net, k_train, task, train, cfg, **opts)
        fisher_prev = None
    else:
        _check_state(net, state)
        net, rep = train_task(
            net, k_train, task, train, cfg, penalty=_ewc_penalty(cfg.ewc_lambda), aux=state, **opts
        )
        fisher_prev = state["fisher"]
    raw = diagonal_fisher(
        net, k_fisher, task, train[0], num_samples=cfg.fisher_samples,
        estimator=cfg.fisher_estimator, likelihood=_likelihood(cfg, loss),
    )  # fmt: skip
    fisher = normalise_fisher(raw, cfg.fisher_norm)
    if fisher_prev is not None:
        fisher = jax.tree.map(jnp.add, fisher, fisher_prev)
    new_state = {"anchor": shared_params(net.params), "fisher": fisher}
    report = _report(net, task, valid, cfg, rep, "ewc", new_state, loss=loss)
    report["fisher"] = _fisher_stats(raw)
    return net, report


def _likelihood(cfg, loss) -> str:
    """The model ``p(y|x)`` of the Fisher: Bernoulli per logit for the sigmoid loss.

    The sampled estimator keeps the categorical model (as before the exact one existed).
    """
    if cfg.fisher_estimator == "sample":
        return "softmax"
    if loss is None and cfg.loss in ("sigmoid", "sigmoid_ce"):
        return "sigmoid"
    return "softmax"


def _fisher_stats(fisher: dict) -> dict:
    """Mean, max and entry count of a task's (unnormalised) Fisher, for the task report."""
    leaves = [np.asarray(v) for v in jax.tree.leaves(fisher)]
    size = sum(v.size for v in leaves)
    total = float(sum(v.sum() for v in leaves))
    return {"mean": total / max(size, 1), "max": float(max(v.max() for v in leaves)),
            "entries": int(size)}  # fmt: skip


def _check_state(net: ExpandableNet, state: Any) -> None:
    shapes = jax.tree.map(np.shape, shared_params(net.params))
    for key in ("anchor", "fisher"):
        if not isinstance(state, dict) or key not in state:
            raise ValueError(
                f"EWC state must be a dict with 'anchor' and 'fisher', got {state!r:.80}"
            )
        got = jax.tree.map(np.shape, state[key])
        if got != shapes:
            raise ValueError(f"EWC state[{key!r}] has shapes {got}, expected {shapes}")


@dataclasses.dataclass(frozen=True)
class Method:
    """A learner and how the runner drives it.

    Attributes:
      name: the ``--method`` name.
      learn_task: the learner function (DEN's call shape).
      separate_networks: True when every task gets a fresh network (STL).
      stateful: True when ``report["state"]`` must be passed to the next task (and saved
        in checkpoints).
      predict: ``(net, state, x, task) -> logits`` for methods whose model is not (only)
        ``net`` (e.g. columns kept in ``state``); ``None``: ``dj.apply(net, x, task)``.
        ``task`` is a name and static under ``jax.jit``.
      count: ``(net, state, task=None) -> {"params": stored, "nonzero": non-zero}``
        (optionally ``"units"``): parameter counts of the whole model after a task, or of
        what ``task``'s forward pass uses; ``None``: counted on ``net``.
      task_network: ``(net, state, task) -> ExpandableNet`` that predicts ``task`` with
        ``dj.apply`` (e.g. PackNet's owner-masked weights), used by ``stream.load_task``;
        ``None``: ``net`` itself.
      needs_history: True when the learner takes ``history=``: a list of
        ``(task_name, (x_train, y_train))`` of every earlier task (joint training).
      uses_den_config: True when the learner takes a ``den.DENConfig`` (DEN and its
        ablations); False: a :class:`BaselineConfig`.
    """

    name: str
    learn_task: Callable
    separate_networks: bool = False
    stateful: bool = False
    predict: Callable | None = None
    count: Callable | None = None
    task_network: Callable | None = None
    needs_history: bool = False
    uses_den_config: bool = False


BASELINES: dict[str, Method] = {
    "stl": Method("stl", stl_learn_task, separate_networks=True),
    "finetune": Method("finetune", finetune_learn_task),
    "l2": Method("l2", l2_learn_task),
    "ewc": Method("ewc", ewc_learn_task, stateful=True),
}


def ewc_state_abstract(net: ExpandableNet) -> dict:
    """Abstract (``ShapeDtypeStruct``) EWC state for ``net``, for typed checkpoint restores."""
    sds = jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(np.shape(v), jnp.float32), shared_params(net.params)
    )
    return {"anchor": sds, "fisher": sds}
