"""Helper run in a subprocess by tests/test_der_experiment.py (multi-device check).

Usage: ``python tests/der_helpers.py OUT.npz`` -- trains a tiny DER for two
steps on all local devices (data-parallel) and saves the final trainable
parameters, BN statistics and test logits. XLA_FLAGS decides the device count.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from den_jax.der import evaluate, model, train

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def main(path: str) -> None:
    mesh = train.make_mesh()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
    y = jnp.asarray(np.repeat(np.arange(4), 16).astype(np.int32))
    data_x, data_y = train.replicate(x, mesh), train.replicate(y, mesh)
    state = model.init_der_state(
        jax.random.key(0), base_width=4, in_channels=3, image_size=8, num_first=2, num_total=4
    )
    for t, pool in enumerate([np.arange(32), np.arange(64)]):
        if t:
            state = model.expand(state, jax.random.key(7), 2)
        tx = train.make_optimizer(lr=0.05, milestones=[], steps_per_epoch=2, weight_decay=5e-4)
        opt = train.replicate(tx.init(model.trainable(state)), mesh)
        state = train.replicate(state, mesh)
        fn = train.make_train_step(tx, aux_weight=float(t > 0), mean=MEAN, std=STD)
        batches = [
            pool[b] for b in train.epoch_batches(np.random.default_rng(t), len(pool), 16, mesh.size)
        ]
        if t == 0:  # snapshot after a single SGD step (tight comparison)
            state, opt, _ = train.run_epoch(
                fn, state, opt, data_x, data_y, batches[:1], jax.random.key(99), mesh
            )
            first = _flat(state, "first")
            batches = batches[1:]
        state, opt, _ = train.run_epoch(
            fn, state, opt, data_x, data_y, batches, jax.random.key(t), mesh
        )
    logits, _ = evaluate.predict_all(evaluate.make_predict(MEAN, STD), state, np.asarray(x), 32)
    np.savez(path, logits=logits, num_devices=mesh.size, **first, **_flat(state, "final"))


def _flat(state, prefix):
    leaves = jax.tree_util.tree_flatten_with_path(
        {"p": model.trainable(state), "bs": state.new["batch_stats"]}
    )[0]
    return {prefix + jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


if __name__ == "__main__":
    main(sys.argv[1])
