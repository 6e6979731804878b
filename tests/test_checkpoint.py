"""Tests for the generic orbax checkpoint helper."""

import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from den_jax import checkpoint as ckpt


class CheckpointTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()

    def test_round_trip_typed_optax_state_and_growing_shapes(self):
        params0 = {"w": jnp.arange(32.0).reshape(4, 8), "b": jnp.zeros(8)}
        tx = optax.adam(1e-3)
        opt0 = tx.init(params0)
        ckpt.save_step(self.dir, 0, {"params": params0, "opt": opt0}, {"order": [3, 1], 0: "x"})
        # Step 1 has a grown layer; both steps coexist.
        params1 = {"w": jnp.ones((4, 10)), "b": jnp.ones(10)}
        opt1 = tx.init(params1)
        ckpt.save_step(self.dir, 1, {"params": params1, "opt": opt1}, {"width": 10})
        self.assertEqual(ckpt.completed_steps(self.dir), [0, 1])
        self.assertEqual(ckpt.latest_step(self.dir), 1)

        meta0 = ckpt.restore_meta(self.dir, 0)
        self.assertEqual(meta0, {"order": [3, 1], "0": "x"})  # int keys become strings
        meta1 = ckpt.restore_meta(self.dir, 1)
        abstract = jax.eval_shape(
            lambda: {
                "params": {"w": jnp.zeros((4, meta1["width"])), "b": jnp.zeros(meta1["width"])},
                "opt": tx.init({"w": jnp.zeros((4, 10)), "b": jnp.zeros(10)}),
            }
        )
        arrays, meta = ckpt.restore_step(self.dir, 1, abstract)
        self.assertEqual(meta, {"width": 10})
        chex.assert_trees_all_equal(arrays["params"], params1)
        self.assertIsInstance(arrays["opt"][0], optax.ScaleByAdamState)
        chex.assert_trees_all_equal(arrays["opt"], opt1)

        arrays0, _ = ckpt.restore_step(
            self.dir, 0, jax.eval_shape(lambda: {"params": params0, "opt": opt0})
        )
        chex.assert_trees_all_equal(arrays0["params"], params0)

    def test_wrong_shape_is_refused(self):
        ckpt.save_step(self.dir, 0, {"w": np.ones((4, 8), np.float32)}, {})
        with self.assertRaises(ValueError):
            ckpt.restore_step(self.dir, 0, {"w": jax.ShapeDtypeStruct((4, 9), jnp.float32)})
        with self.assertRaisesRegex(ValueError, "expected"):
            ckpt.restore_step(self.dir, 0, {"w": jax.ShapeDtypeStruct((4, 7), jnp.float32)})
        with self.assertRaises(ValueError):
            ckpt.restore_step(self.dir, 0, {"v": jax.ShapeDtypeStruct((4, 8), jnp.float32)})

    def test_missing_step_and_duplicate(self):
        self.assertEqual(ckpt.completed_steps(os.path.join(self.dir, "nope")), [])
        self.assertIsNone(ckpt.latest_step(self.dir))
        with self.assertRaisesRegex(ValueError, "no completed checkpoint step 3"):
            ckpt.restore_meta(self.dir, 3)
        ckpt.save_step(self.dir, 0, {"w": np.ones(3, np.float32)}, {})
        with self.assertRaisesRegex(ValueError, "already exists"):
            ckpt.save_step(self.dir, 0, {"w": np.ones(3, np.float32)}, {})

    def test_uncommitted_tmp_dir_is_not_listed(self):
        ckpt.save_step(self.dir, 0, {"w": np.ones(3, np.float32)}, {})
        # A half-written save: orbax's temporary directory naming.
        os.makedirs(os.path.join(self.dir, "1.orbax-checkpoint-tmp-123"))
        self.assertEqual(ckpt.completed_steps(self.dir), [0])

    def test_digest_record_and_verification(self):
        ckpt.save_step(self.dir, 0, {"w": np.arange(6, dtype=np.float32)}, {"k": [1, 2]})
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "0", ckpt.DIGESTS)))
        ckpt.verify_step(self.dir, 0)
        self.assertEqual(ckpt.verified_steps(self.dir), [0])
        self.assertEqual(ckpt.latest_verified_step(self.dir), 0)
        self.assertIsNone(ckpt.latest_verified_step(os.path.join(self.dir, "none")))
        self.assertTrue(issubclass(ckpt.CorruptCheckpointError, ValueError))

    def test_json_files(self):
        path = os.path.join(self.dir, "r.json")
        ckpt.write_json_atomic(path, {"a": [1, 2.5, None], "b": "x"})
        self.assertEqual(ckpt.read_json(path), {"a": [1, 2.5, None], "b": "x"})
        ckpt.write_json_atomic(path, {"a": 2})
        self.assertEqual(ckpt.read_json(path), {"a": 2})
        self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".tmp")], [])
        open(path, "w").close()
        with self.assertRaisesRegex(ValueError, r"r\.json.*not valid JSON.*expected a config"):
            ckpt.read_json(path, what="a config")
        with self.assertRaisesRegex(OSError, "no/such/dir"):
            ckpt.write_json_atomic(os.path.join(self.dir, "no", "such", "dir", "x.json"), {})

    def test_config_check(self):
        saved = {"lr": 0.1, "milestones": [60, 120], "out": "/a", "seed": 1}
        ckpt.check_config_compatible(
            saved, {"lr": 0.1, "milestones": (60, 120), "out": "/a", "seed": 1}
        )
        ckpt.check_config_compatible(
            saved, {"lr": 0.1, "milestones": (60, 120), "out": "/b", "seed": 1}, ignore=["out"]
        )
        with self.assertRaisesRegex(ValueError, r"lr: saved=0.1 current=0.2.*seed"):
            ckpt.check_config_compatible(
                saved, {"lr": 0.2, "milestones": [60, 120], "out": "/a", "seed": 2}
            )
        with self.assertRaisesRegex(ValueError, "extra"):
            ckpt.check_config_compatible(saved, {**saved, "extra": 1})


if __name__ == "__main__":
    absltest.main()
