"""Tests of the generic training loop (den_jax.training)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest

from den_jax.training import (
    apply_in_batches,
    as_arrays,
    evaluate_loss,
    resolve_optimizer,
    train_step,
    train_steps,
)


def _linear_data(n=64, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = np.arange(1, d + 1, dtype=np.float32)
    return x, x @ w


def _mse(params, xb, yb):
    return jnp.mean((xb @ params["w"] + params["b"] - yb) ** 2)


class TrainStepsTest(chex.TestCase):
    def test_fits_linear_regression(self):
        x, y = _linear_data()
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.adam(0.05)
        params, _, losses = train_steps(
            params, tx.init(params), tx=tx, loss_fn=_mse, x=x, y=y,
            key=jax.random.key(0), num_steps=600, batch_size=16,
        )  # fmt: skip
        self.assertEqual(losses.shape, (600,))
        self.assertLess(float(losses[-20:].mean()), 1e-3)
        np.testing.assert_allclose(params["w"], [1.0, 2.0, 3.0], atol=2e-2)

    def test_each_example_once_per_epoch(self):
        n, bs = 12, 4
        x = np.eye(n, dtype=np.float32)  # row i marks example i
        y = np.zeros(n, np.float32)
        params = {"count": jnp.zeros(n)}
        tx = optax.sgd(1.0)
        loss = lambda p, xb, yb: -jnp.sum(xb @ p["count"])
        for epochs in (1, 2):
            out, _, _ = train_steps(
                params, tx.init(params), tx=tx, loss_fn=loss, x=x, y=y,
                key=jax.random.key(3), num_steps=epochs * n // bs, batch_size=bs,
            )  # fmt: skip
            np.testing.assert_array_equal(out["count"], np.full(n, float(epochs)))

    def test_masked_entries_bit_identical_under_adamw(self):
        x, y = _linear_data()
        params = {"w": jnp.asarray([0.3, -0.7, 1.1]), "b": jnp.asarray(0.25)}
        mask = {"w": jnp.asarray([1.0, 0.0, 1.0]), "b": jnp.asarray(0.0)}
        # Weight decay and Adam moments would move every entry without the mask.
        tx = optax.adamw(0.1, weight_decay=0.5)
        opt_state = tx.init(params)
        # Prime non-zero moments for the masked entries too.
        g = jax.grad(_mse)(params, x, y)
        _, opt_state = tx.update(g, opt_state, params)
        out, _, _ = train_steps(
            params, opt_state, tx=tx, loss_fn=_mse, x=x, y=y, key=jax.random.key(1),
            num_steps=25, batch_size=8, update_mask=mask,
        )  # fmt: skip
        self.assertEqual(np.asarray(out["w"])[1].tobytes(), np.asarray(params["w"])[1].tobytes())
        self.assertEqual(np.asarray(out["b"]).tobytes(), np.asarray(params["b"]).tobytes())
        self.assertFalse(np.allclose(out["w"][0], params["w"][0]))
        self.assertFalse(np.allclose(out["w"][2], params["w"][2]))

    def test_prox_receives_scheduled_lr_and_respects_mask(self):
        x, y = _linear_data(n=8)
        params = {"w": jnp.ones(3), "b": jnp.zeros(())}
        tx = optax.sgd(0.0)  # only the prox moves the parameters
        schedule = lambda step: 0.1 * (step + 1)  # steps 0, 1 -> lr 0.1, 0.2 (offset 0)
        prox = lambda p, lr: jax.tree.map(lambda v: v - lr, p)
        mask = {"w": jnp.asarray([1.0, 1.0, 0.0]), "b": jnp.asarray(1.0)}
        out, _, _ = train_steps(
            params, tx.init(params), tx=tx, loss_fn=_mse, x=x, y=y, key=jax.random.key(0),
            num_steps=2, batch_size=4, prox=prox, learning_rate=schedule, update_mask=mask,
        )  # fmt: skip
        np.testing.assert_allclose(out["w"], [0.7, 0.7, 1.0], rtol=1e-6)
        np.testing.assert_allclose(out["b"], -0.3, rtol=1e-6)
        out2, _, _ = train_steps(
            params, tx.init(params), tx=tx, loss_fn=_mse, x=x, y=y, key=jax.random.key(0),
            num_steps=1, batch_size=4, prox=prox, learning_rate=schedule, step_offset=4,
        )  # fmt: skip
        np.testing.assert_allclose(out2["w"], [0.5, 0.5, 0.5], rtol=1e-6)

    def test_loss_aux_and_one_compile(self):
        x, y = _linear_data()
        traces = []

        def loss(p, xb, yb, aux):
            traces.append(1)
            return _mse(p, xb, yb) + aux["lam"] * jnp.sum((p["w"] - aux["prev"]) ** 2)

        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.adam(0.05)
        results = []
        for lam in (0.0, 100.0):
            aux = {"lam": jnp.asarray(lam), "prev": jnp.zeros(3)}
            out, _, _ = train_steps(
                params, tx.init(params), tx=tx, loss_fn=loss, x=x, y=y, key=jax.random.key(0),
                num_steps=200, batch_size=16, loss_aux=aux,
            )  # fmt: skip
            results.append(out)
        n_traces = len(traces)
        self.assertLessEqual(n_traces, 2)  # value_and_grad traces once per compile
        # A strong pull to prev=0 keeps the weights small.
        self.assertLess(float(jnp.abs(results[1]["w"]).max()), 0.1)
        self.assertGreater(float(results[0]["w"][2]), 2.0)

    def test_bad_arguments(self):
        x, y = _linear_data(n=8)
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.sgd(0.1)
        common = dict(tx=tx, loss_fn=_mse, key=jax.random.key(0))
        with pytest.raises(ValueError, match="num_steps"):
            train_steps(params, tx.init(params), x=x, y=y, num_steps=0, batch_size=2, **common)
        with pytest.raises(ValueError, match="batch_size 9 is larger"):
            train_steps(params, tx.init(params), x=x, y=y, num_steps=1, batch_size=9, **common)
        with pytest.raises(ValueError, match="leading"):
            train_steps(params, tx.init(params), x=x, y=y[:5], num_steps=1, batch_size=2, **common)
        with pytest.raises(ValueError, match="update_mask"):
            train_steps(
                params, tx.init(params), x=x, y=y, num_steps=1, batch_size=2,
                update_mask={"w": jnp.ones(3)}, **common,
            )  # fmt: skip


class EvaluateLossTest(chex.TestCase):
    def test_weighted_mean_with_remainder(self):
        x, y = _linear_data(n=10)
        params = {"w": jnp.asarray([1.0, 0.0, 0.0]), "b": jnp.asarray(0.5)}
        full = float(_mse(params, x, y))
        for bs in (1, 3, 4, 10, 64):
            self.assertAlmostEqual(evaluate_loss(_mse, params, x, y, batch_size=bs), full, 4)

    def test_apply_in_batches(self):
        x = np.arange(14, dtype=np.float32).reshape(7, 2)
        out = apply_in_batches(lambda b: b.sum(-1), x, batch_size=3)
        np.testing.assert_array_equal(out, x.sum(-1))


class NonFiniteTest(chex.TestCase):
    def test_non_finite_parameters_after_a_finite_loss(self):
        x, y = _linear_data(n=8)
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.sgd(float("inf"))
        loss = lambda p, xb, yb: jnp.sum(p["w"]) + 0 * p["b"]  # finite until the update
        with pytest.raises(FloatingPointError, match="parameters became non-finite at step 0"):
            train_steps(
                params, tx.init(params), tx=tx, loss_fn=loss, x=x, y=y, key=jax.random.key(0),
                num_steps=1, batch_size=4,
            )  # fmt: skip

    def test_exact_step_and_offset_in_message(self):
        x = np.arange(8, dtype=np.float32)[:, None]
        y = np.zeros(8, np.float32)
        params = {"w": jnp.zeros(())}
        tx = optax.sgd(1.0)
        # Step i sees batch rows of one epoch; only the row holding 5.0 gives a NaN.
        loss = lambda p, xb, yb: jnp.mean(jnp.where(xb[:, 0] == 5.0, jnp.nan, 0.0)) + 0 * p["w"]
        with pytest.raises(FloatingPointError) as err:
            train_steps(
                params, tx.init(params), tx=tx, loss_fn=loss, x=x, y=y, key=jax.random.key(0),
                num_steps=8, batch_size=1, step_offset=100,
            )  # fmt: skip
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(0), 0), 8))
        step = int(np.flatnonzero(perm == 5)[0])
        assert f"at step {step} of 8 (global step {100 + step})" in str(err.value)

    def test_finite_run_passes(self):
        x, y = _linear_data(n=8)
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.sgd(0.01)
        train_steps(
            params, tx.init(params), tx=tx, loss_fn=_mse, x=x, y=y, key=jax.random.key(0),
            num_steps=3, batch_size=4,
        )  # fmt: skip


class TrainStepTest(chex.TestCase):
    def test_one_step_matches_a_hand_written_step(self):
        x, y = _linear_data(n=4)
        params = {"w": jnp.ones(3), "b": jnp.zeros(())}
        tx = optax.adam(0.1)
        new, _, loss, grads = jax.jit(lambda p, s: train_step(p, s, x, y, tx=tx, loss_fn=_mse))(
            params, tx.init(params)
        )
        g = jax.grad(_mse)(params, x, y)
        upd, _ = tx.update(g, tx.init(params), params)
        chex.assert_trees_all_close(new, optax.apply_updates(params, upd))
        chex.assert_trees_all_close(grads, g)
        np.testing.assert_allclose(loss, _mse(params, x, y))
        frozen, _, _, _ = train_step(
            params, tx.init(params), x, y, tx=tx, loss_fn=_mse,
            update_mask={"w": jnp.asarray([0.0, 1.0, 1.0]), "b": jnp.zeros(())},
        )  # fmt: skip
        self.assertEqual(float(frozen["w"][0]), 1.0)
        self.assertEqual(float(frozen["b"]), 0.0)

    def test_typed_and_raw_keys(self):
        x, y = _linear_data(n=16)
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        tx = optax.sgd(0.01)
        outs = [
            train_steps(
                params,
                tx.init(params),
                tx=tx,
                loss_fn=_mse,
                x=x,
                y=y,
                key=k,
                num_steps=5,
                batch_size=4,
            )[0]  # fmt: skip
            for k in (jax.random.key(3), jax.random.PRNGKey(3))
        ]
        chex.assert_trees_all_equal(*outs)


class OptimizerConventionTest(absltest.TestCase):
    def test_tx_factory_and_default(self):
        tx = optax.sgd(0.1)
        self.assertIs(resolve_optimizer(tx, 0.5), tx)
        seen = []
        out = resolve_optimizer(lambda s: seen.append(s) or optax.sgd(s), 0.5)
        self.assertIsInstance(out, optax.GradientTransformation)
        self.assertEqual(seen, [0.5])
        self.assertIsInstance(resolve_optimizer(None, 0.5), optax.GradientTransformation)

    def test_bad_optimizers(self):
        with pytest.raises(ValueError, match="GradientTransformation or a factory"):
            resolve_optimizer("adam", 0.1)
        with pytest.raises(ValueError, match="factory must return"):
            resolve_optimizer(lambda s: 3, 0.1)


class AsArraysTest(absltest.TestCase):
    def test_pair_is_returned(self):
        x, y = np.ones((4, 2)), np.arange(4)
        ox, oy = as_arrays((x, y), "d")
        self.assertIs(ox, x)
        self.assertIs(oy, y)
        ox, oy = as_arrays([[[1.0, 2.0], [3.0, 4.0]], [0, 1]], "d")  # nested lists
        self.assertEqual(ox.shape, (2, 2))

    def test_iterables_are_concatenated(self):
        x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
        batches = [(x[:2], y[:2]), (x[2:4], y[2:4]), (x[4:], y[4:])]
        for data in (batches, iter(batches), (b for b in batches), tuple(batches[:2])):
            ox, oy = as_arrays(data, "d")
            n = len(ox)
            np.testing.assert_array_equal(ox, x[:n])
            np.testing.assert_array_equal(oy, y[:n])
        self.assertEqual(len(as_arrays(batches, "d")[0]), 5)

    def test_errors_name_the_data(self):
        x = np.ones((4, 2))
        with pytest.raises(ValueError, match="task 't' train must be a pair"):
            as_arrays(x, "task 't' train")
        with pytest.raises(ValueError, match="mydata must be a pair"):
            as_arrays(None, "mydata")
        with pytest.raises(ValueError, match="mydata must be a pair"):
            as_arrays(3, "mydata")
        with pytest.raises(ValueError, match="mydata: batch 1 must be a pair"):
            as_arrays([(x, x[:, 0]), x], "mydata")
        with pytest.raises(ValueError, match="mydata: the iterable yielded no batch"):
            as_arrays(iter([]), "mydata")
        with pytest.raises(ValueError, match="mydata: batch 1 has x"):
            as_arrays([(x, x[:, 0]), (np.ones((2, 3)), np.ones(2))], "mydata")
        with pytest.raises(ValueError, match="same number of rows"):
            as_arrays((x, np.ones(3)), "mydata")
        with pytest.raises(ValueError, match="no rows"):
            as_arrays((np.ones((0, 2)), np.ones(0)), "mydata")


if __name__ == "__main__":
    absltest.main()
