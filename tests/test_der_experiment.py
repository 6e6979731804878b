"""End-to-end DER tests: smoke CLI with crash + resume, config refusal, 8-device run."""

import json
import os
import subprocess
import sys
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from den_jax import checkpoint as ckpt
from den_jax.der import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


class DERStateCheckpointTest(chex.TestCase):
    def test_der_state_round_trip(self):
        s = model.init_der_state(
            jax.random.key(0),
            base_width=2,
            in_channels=1,
            image_size=8,
            num_first=2,
            num_total=4,
            prune=True,
        )
        s = model.expand(s, jax.random.key(1), 2)
        d = tempfile.mkdtemp()
        ckpt.save_step(d, 1, {"state": s}, {"num_old": s.num_old, "num_seen": s.num_seen})
        meta = ckpt.restore_meta(d, 1)
        abstract = model.abstract_state(
            base_width=2,
            in_channels=1,
            image_size=8,
            old_inner_widths=s.old_inner_widths,
            num_old=meta["num_old"],
            num_seen=meta["num_seen"],
            num_total=4,
            prune=True,
        )
        arrays, _ = ckpt.restore_step(d, 1, {"state": abstract})
        back = arrays["state"]
        self.assertIsInstance(back, model.DERState)
        self.assertEqual(
            (back.num_old, back.num_seen, back.old_inner_widths),
            (s.num_old, s.num_seen, s.old_inner_widths),
        )
        chex.assert_trees_all_equal(jax.tree.map(jnp.asarray, back), s)


class SmokeResumeTest(chex.TestCase):
    def test_smoke_crash_resume_and_refusal(self):
        out = tempfile.mkdtemp()
        base = [
            "-m",
            "experiments.cifar100_der",
            "--preset",
            "smoke",
            "--num-classes",
            "4",
            "--out",
            out,
        ]
        r = _run(base + ["--crash-after-step", "0"])
        self.assertNotEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn("simulated crash after step 0", r.stderr)
        self.assertEqual(ckpt.completed_steps(os.path.join(out, "checkpoints")), [0])
        with open(os.path.join(out, "results.json")) as f:
            first = json.load(f)
        self.assertEqual(len(first["top1_curve"]), 1)

        r = _run(base)  # without --resume: refused, nothing overwritten
        self.assertEqual(r.returncode, 2, r.stderr[-2000:])
        self.assertIn("pass --resume", r.stderr)
        r = _run(base + ["--resume", "--lr", "0.5"])  # different config: refused
        self.assertEqual(r.returncode, 2)
        self.assertIn("refusing to resume", r.stderr)
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        keys = [part.split(":")[0].strip() for part in line.split("Differing keys: ")[1].split(";")]
        self.assertEqual(keys, ["first_lr", "later_lr"])  # only the fields that differ
        self.assertNotIn("Traceback", r.stderr)

        r = _run(base + ["--resume"])
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertIn("resumed after step 0", r.stdout + r.stderr)
        with open(os.path.join(out, "results.json")) as f:
            res = json.load(f)
        for k in (
            "preset",
            "class_order",
            "top1_curve",
            "top5_curve",
            "avg_incremental_accuracy",
            "grouped",
            "params",
            "seconds",
            "forgetting",
        ):
            self.assertIn(k, res)
        self.assertEqual(res["preset"], "smoke")
        self.assertEqual(len(res["top1_curve"]), 2)
        self.assertEqual(res["top1_curve"][0], first["top1_curve"][0])
        self.assertEqual(len(res["params"]), 2)
        self.assertGreater(res["params"][1]["all"], res["params"][0]["all"])
        self.assertEqual(ckpt.completed_steps(os.path.join(out, "checkpoints")), [0, 1])
        for png in ("accuracy.png", "grouped.png"):
            self.assertGreater(os.path.getsize(os.path.join(out, png)), 1000)
        meta = ckpt.restore_meta(os.path.join(out, "checkpoints"), 1)
        self.assertEqual(meta["class_order"], res["class_order"])
        self.assertEqual(len(meta["memory"]), 4)


class BadInputTest(chex.TestCase):
    def test_one_error_line_and_exit_code_2(self):
        for args, msg in (
            (["--preset", "nope", "--out", "/tmp/x"], "unknown preset 'nope'"),
            (["--preset", "smoke", "--out", "/tmp/x", "--method", "ewc"], "--method"),
            (["--preset", "b0_10", "--out", "/tmp/x"], "needs --data-dir"),
            (["--preset", "smoke", "--out", "/tmp/x", "--batch-size", "0"], "batch_size"),
        ):
            r = _run(["-m", "experiments.cifar100_der", *args])
            self.assertEqual(r.returncode, 2, (args, r.stderr[-2000:]))
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            self.assertLen(lines, 1, (args, r.stderr))
            self.assertTrue(lines[0].startswith("error: "), lines[0])
            self.assertIn(msg, lines[0])
        r = _run(["-m", "experiments.cifar100_der", "--preset", "nope", "--out", "/x", "--debug"])
        self.assertIn("Traceback", r.stderr)


class MultiDeviceTest(chex.TestCase):
    def test_eight_devices_match_one(self):
        d = tempfile.mkdtemp()
        helper = os.path.join(ROOT, "tests", "der_helpers.py")
        outs = {}
        for n in (1, 8):
            path = os.path.join(d, f"{n}.npz")
            flags = f"--xla_force_host_platform_device_count={n}"
            r = _run([helper, path], {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
            self.assertEqual(r.returncode, 0, r.stderr[-3000:])
            outs[n] = dict(np.load(path))
        self.assertEqual(int(outs[1]["num_devices"]), 1)
        self.assertEqual(int(outs[8]["num_devices"]), 8)
        self.assertEqual(outs[1].keys(), outs[8].keys())
        # After one SGD step: equal up to float reduction order.
        first = [k for k in outs[1] if k.startswith("first")]
        self.assertGreater(len(first), 50)
        for k in first:
            np.testing.assert_allclose(outs[8][k], outs[1][k], rtol=1e-4, atol=1e-5, err_msg=k)
        # After two DER steps (many SGD steps, lr 0.05) rounding differences grow a little;
        # the models must still agree closely.
        for k in outs[1]:
            if k.startswith("final"):
                np.testing.assert_allclose(outs[8][k], outs[1][k], rtol=0.05, atol=0.02, err_msg=k)
        np.testing.assert_allclose(outs[8]["logits"], outs[1]["logits"], rtol=0.05, atol=0.2)
        agree = np.mean(outs[8]["logits"].argmax(1) == outs[1]["logits"].argmax(1))
        self.assertGreaterEqual(agree, 0.95)


class ValidationSplitTest(chex.TestCase):
    def test_held_out_per_class_and_disjoint(self):
        from experiments import cifar100_der

        y = np.repeat(np.arange(3), 10)
        x = np.arange(30)[:, None]
        (xt, yt), (xv, yv) = cifar100_der.validation_split((x, y), 4, seed=0)
        np.testing.assert_array_equal(np.bincount(yv), [4, 4, 4])
        np.testing.assert_array_equal(np.bincount(yt), [6, 6, 6])
        self.assertFalse(set(xt[:, 0]) & set(xv[:, 0]))
        cfg, _ = cifar100_der.parse_args(["--synthetic", "--out", "/tmp/x", "--val-per-class", "2"])
        self.assertEqual(cfg.val_per_class, 2)
        with self.assertRaisesRegex(ValueError, "cannot hold out"):
            cifar100_der.validation_split((x, y), 10, seed=0)


if __name__ == "__main__":
    absltest.main()
