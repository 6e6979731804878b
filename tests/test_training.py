"""Tests of the generic training loop (den_jax.training)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import absltest

from den_jax.training import apply_in_batches, evaluate_loss, train_steps


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


if __name__ == "__main__":
    absltest.main()
