"""Baselines: which parameters each one trains, its penalty, EWC's Fisher, bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import den_jax as dj
from den_jax import losses, stream
from den_jax.baselines import (
    BASELINES,
    BaselineConfig,
    diagonal_fisher,
    normalise_fisher,
    shared_params,
)
from den_jax.baselines.common import loss_of, make_loss_fn

CFG = BaselineConfig(steps=30, batch_size=16, fisher_samples=32, learning_rate=1e-2)


def _data(seed, n=64, d=6, c=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5)
    return x, y.astype(np.int32)


def _two_task_net(key):
    net = dj.init_network(key, [8, 5], shared_input_dim=6)
    net = dj.add_task(net, jax.random.fold_in(key, 1), "a", input_dim=6, output_dim=3)
    return net


@pytest.mark.parametrize("name", ["finetune", "l2", "ewc"])
def test_old_heads_frozen_shared_layers_trained(name):
    key = jax.random.key(0)
    method = BASELINES[name]
    net = _two_task_net(key)
    net, rep = method.learn_task(net, key, "a", _data(0), _data(1), CFG)
    state = rep.pop("state")
    assert rep["loss"] < rep["loss_first"]
    before = net
    net = dj.add_task(net, jax.random.fold_in(key, 2), "b", input_dim=6, output_dim=3)
    net, rep = method.learn_task(net, key, "b", _data(2), _data(3), CFG, state=state)
    chex.assert_trees_all_equal(net.params["output_heads"]["a"], before.params["output_heads"]["a"])
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), shared_params(net.params), shared_params(before.params)
    )
    assert all(jax.tree.leaves(changed))


def test_l2_penalty_limits_drift():
    key = jax.random.key(1)
    drifts = {}
    for lam in (0.0, 50.0):
        cfg = BaselineConfig(steps=40, batch_size=16, l2_lambda=lam, weight_decay=0.0)
        net = _two_task_net(key)
        net, _ = BASELINES["l2"].learn_task(net, key, "a", _data(0), _data(1), cfg)
        prev = shared_params(net.params)
        net = dj.add_task(net, jax.random.fold_in(key, 2), "b", input_dim=6, output_dim=3)
        net, _ = BASELINES["l2"].learn_task(net, key, "b", _data(5), _data(6), cfg)
        diff = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), shared_params(net.params), prev)
        drifts[lam] = float(sum(jax.tree.leaves(diff)))
    assert drifts[50.0] < 0.5 * drifts[0.0]


def test_diagonal_fisher_matches_per_example_loop():
    key = jax.random.key(2)
    net = _two_task_net(key)
    x, _ = _data(0, n=8)
    fisher = diagonal_fisher(net, key, "a", x, num_samples=8, chunk=3, estimator="sample")
    # Reference: the same sampled labels, gradients one example at a time.
    meta = net.meta
    ys = []
    for i, start in enumerate(range(0, 8, 3)):
        logits = dj.apply(net, x[start : start + 3], "a")
        ys.append(jax.random.categorical(jax.random.fold_in(key, i), logits))
    ys = jnp.concatenate(ys)

    def ll(shared, xi, yi):
        params = {**net.params, "hidden": shared["hidden"]}
        params["input_heads"] = {"shared": shared["input"]}
        return jax.nn.log_softmax(dj.apply(dj.ExpandableNet(params, meta), xi[None], "a")[0])[yi]

    shared = shared_params(net.params)
    ref = jax.tree.map(jnp.zeros_like, shared)
    for i in range(8):
        g = jax.grad(ll)(shared, x[i], ys[i])
        ref = jax.tree.map(lambda r, v: r + v**2 / 8, ref, g)
    chex.assert_trees_all_close(fisher, ref, rtol=1e-4, atol=1e-7)


def _ll(net, shared, xi, c, likelihood="softmax"):
    params = {**net.params, "hidden": shared["hidden"]}
    params["input_heads"] = {"shared": shared["input"]}
    z = dj.apply(dj.ExpandableNet(params, net.meta), xi[None], "a")[0]
    return z[c] if likelihood == "sigmoid" else jax.nn.log_softmax(z)[c]


@pytest.mark.parametrize("likelihood", ["softmax", "sigmoid"])
def test_exact_fisher_is_the_expectation_over_classes(likelihood):
    key = jax.random.key(2)
    net = _two_task_net(key)
    x, _ = _data(0, n=5)
    fisher = diagonal_fisher(net, key, "a", x, num_samples=5, chunk=2, likelihood=likelihood)
    shared = shared_params(net.params)
    ref = jax.tree.map(jnp.zeros_like, shared)
    for i in range(5):
        z = dj.apply(net, x[i : i + 1], "a")[0]
        p = jax.nn.sigmoid(z) if likelihood == "sigmoid" else jax.nn.softmax(z)
        w = p * (1 - p) if likelihood == "sigmoid" else p
        for c in range(3):
            g = jax.grad(lambda s, c=c, i=i: _ll(net, s, x[i], c, likelihood))(shared)
            ref = jax.tree.map(lambda r, v, wc=w[c]: r + wc * v**2 / 5, ref, g)
    chex.assert_trees_all_close(fisher, ref, rtol=1e-4, atol=1e-8)


def test_normalised_fisher_has_mean_one():
    tree = {"a": jnp.array([1.0, 3.0]), "b": [jnp.array([[0.0, 4.0]])]}
    out = normalise_fisher(tree, "mean")
    total = sum(float(v.sum()) for v in jax.tree.leaves(out))
    assert total == pytest.approx(4.0) and float(out["a"][1]) == pytest.approx(1.5)
    zero = normalise_fisher(jax.tree.map(jnp.zeros_like, tree), "mean")
    assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(zero))
    assert normalise_fisher(tree, "none") is tree
    with pytest.raises(ValueError, match="normalisation must be one of"):
        normalise_fisher(tree, "max")


def test_ewc_forgets_less_than_finetuning_on_a_class_split_stream(tmp_path):
    """Digits split 0,1 / 2,3, trained to saturation (2-class heads become near-certain).

    A one-sample-per-row Fisher is then almost all zeros and EWC forgot as much as
    fine-tuning (0.13 in one of three seeds); the exact expectation protects task 1.
    """
    from sklearn.datasets import load_digits

    from den_jax.data.tasks import npz_stream

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=x[:1200], y_train=y[:1200], x_test=x[1200:], y_test=y[1200:])
    tasks = npz_stream(str(path), "classes:0,1/2,3")
    cfg = BaselineConfig(steps=200, batch_size=64, learning_rate=1e-2, fisher_samples=128)
    forgetting = {}
    for name in ("finetune", "ewc"):
        res = stream.run_stream(name, tasks, cfg, hidden=[8], seed=1)
        forgetting[name] = res["forgetting"]
    assert forgetting["finetune"] > 0.05, forgetting  # the stream does make fine-tuning forget
    assert forgetting["ewc"] < 0.5 * forgetting["finetune"], forgetting


def test_stl_needs_a_single_task_network():
    key = jax.random.key(3)
    net = _two_task_net(key)
    net = dj.add_task(net, key, "b", input_dim=6, output_dim=3)
    with pytest.raises(ValueError, match="one network per task"):
        BASELINES["stl"].learn_task(net, key, "b", _data(0), _data(1), CFG)


def test_bad_inputs_rejected():
    key = jax.random.key(4)
    net = _two_task_net(key)
    with pytest.raises(ValueError, match="unknown task 'zz'"):
        BASELINES["finetune"].learn_task(net, key, "zz", _data(0), _data(1), CFG)
    with pytest.raises(ValueError, match="cfg must be a BaselineConfig"):
        BASELINES["finetune"].learn_task(net, key, "a", _data(0), _data(1), {"steps": 3})
    with pytest.raises(ValueError, match="EWC state must be a dict"):
        BASELINES["ewc"].learn_task(net, key, "a", _data(0), _data(1), CFG, state=[1])
    with pytest.raises(ValueError, match="BaselineConfig.steps must be a positive integer"):
        BaselineConfig(steps=0)
    with pytest.raises(ValueError, match="BaselineConfig.loss"):
        BaselineConfig(loss="hinge")
    with pytest.raises(ValueError, match="BaselineConfig.fisher_estimator must be one of"):
        BaselineConfig(fisher_estimator="empirical")
    with pytest.raises(ValueError, match="BaselineConfig.fisher_norm must be one of"):
        BaselineConfig(fisher_norm="max")
    with pytest.raises(ValueError, match=r"unknown baseline config key\(s\) \['stepz'\]"):
        BaselineConfig.from_mapping({"stepz": 3})


def test_sigmoid_loss_and_schedule():
    cfg = BaselineConfig(steps=20, batch_size=16, loss="sigmoid", decay_every=32)
    sched = cfg.schedule()
    assert float(sched(0)) == pytest.approx(1e-3)
    assert float(sched(2)) == pytest.approx(1e-3 * 0.95)  # 2 steps * 16 = 32 examples
    key = jax.random.key(5)
    net, rep = BASELINES["finetune"].learn_task(
        _two_task_net(key), key, "a", _data(0), _data(1), cfg
    )
    assert np.isfinite(rep["loss"]) and np.isfinite(rep["valid_loss"])


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_loss_and_optimizer_keywords_and_iterables(name):
    key = jax.random.key(6)
    net = dj.init_network(key, [8], shared_input_dim=6)
    net = dj.add_task(net, jax.random.fold_in(key, 1), "a", input_dim=6, output_dim=3)
    cfg = BaselineConfig(steps=5, batch_size=16, fisher_samples=16)
    x, y = _data(0)
    seen = []

    def loss(logits, yb):
        seen.append(logits.shape)
        return losses.sigmoid_ce(logits, yb)

    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    out, rep = BASELINES[name].learn_task(
        net, key, "a", iter(batches), None, cfg, loss=loss, optimizer=optax.sgd(0.0)
    )
    assert seen and seen[0][-1] == 3  # the custom loss was used
    # sgd(0.0) moves nothing: the optimizer keyword is honoured.
    chex.assert_trees_all_equal(out.params, net.params)
    assert np.isnan(rep["valid_loss"])  # valid=None
    factory = []
    BASELINES[name].learn_task(
        net, key, "a", (x, y), (x, y), cfg, optimizer=lambda s: factory.append(s) or optax.adam(s)
    )
    assert len(factory) == 1 and callable(factory[0])  # called with cfg's schedule


def test_loss_names_and_aliases_use_den_jax_losses():
    for name, want in [("softmax", "softmax_ce"), ("sigmoid", "sigmoid_ce"), ("sigmoid_ce", None)]:
        assert loss_of(BaselineConfig(loss=name)) is losses.get_loss(want or name)


def test_sigmoid_loss_is_the_mean_over_classes():
    key = jax.random.key(7)
    net = _two_task_net(key)
    cfg = BaselineConfig(steps=1, batch_size=16, loss="sigmoid", weight_decay=0.0)
    fn = make_loss_fn(net, "a", cfg)
    x, y = _data(0)
    logits = dj.apply(net, x, "a")
    onehot = jax.nn.one_hot(y, 3)
    np.testing.assert_allclose(
        fn(net.params, x, y, {}),
        optax.sigmoid_binary_cross_entropy(logits, onehot).mean(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", ["stl", "ewc"])
def test_non_finite_loss_names_method_task_and_phase(name):
    key = jax.random.key(8)
    net = _two_task_net(key)
    bad = lambda logits, yb: jnp.mean(jnp.log(logits - 1e6))  # noqa: E731
    with pytest.raises(FloatingPointError, match=rf"{name} task 'a', phase 'train': non-finite"):
        BASELINES[name].learn_task(net, key, "a", _data(0), _data(1), CFG, loss=bad)
