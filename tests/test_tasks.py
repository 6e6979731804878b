"""Task streams: shapes, permutations, class splits, and rejection of bad input."""

import os

import numpy as np
import pytest

from den_jax.data import tasks as T

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def _npz(tmp_path, n=60, d=(4, 4), classes=4, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n, *d), dtype=np.uint8),
        "y_train": np.arange(n) % classes,
        "x_test": rng.integers(0, 256, size=(n // 2, *d), dtype=np.uint8),
        "y_test": np.arange(n // 2) % classes,
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = str(tmp_path / "tiny.npz")
    np.savez(path, **arrays)
    return path


def test_npz_permute_stream(tmp_path):
    s = T.make_stream("npz:" + _npz(tmp_path), "permute:3")
    assert len(s) == 3 and s.shared_input_dim == 16
    t0, t1 = s[0], s[1]
    assert t0.x_train.dtype == np.float32 and t0.x_train.max() <= 1.0
    assert t0.x_train.shape[0] + t0.x_valid.shape[0] == 60
    # Same images and labels, different pixel order; the test split follows the same map.
    assert np.array_equal(t0.y_train, t1.y_train)
    assert not np.array_equal(t0.x_train, t1.x_train)
    assert np.allclose(np.sort(t0.x_train, 1), np.sort(t1.x_train, 1))
    x_te, y_te = s.test_data(2)
    assert np.array_equal(x_te, s[2].x_test) and np.array_equal(y_te, s[2].y_test)


def test_npz_class_split_stream(tmp_path):
    s = T.make_stream("npz:" + _npz(tmp_path), "classes:3,1/0,2")
    assert s.names == ["classes0", "classes1"]
    t0 = s[0]
    assert t0.num_classes == 2 and t0.metadata["classes"] == [3, 1]
    assert set(np.unique(t0.y_test)) == {0, 1}
    # label 0 of task 0 is original class 3
    src = np.load(str(tmp_path / "tiny.npz"))
    x = (src["x_test"][src["y_test"] == 3].reshape(-1, 16) / 255.0).astype(np.float32)
    assert np.allclose(t0.x_test[t0.y_test == 0], x)


def test_sklearn_hetero_stream():
    s = T.make_stream("sklearn_hetero", None)
    assert s.names == ["iris", "wine", "breast_cancer", "digits"]
    assert s.shared_input_dim is None
    dims = [(s[i].input_dim, s[i].num_classes) for i in range(4)]
    assert dims == [(4, 3), (13, 3), (30, 2), (64, 10)]
    t = s[1]
    assert np.allclose(t.x_train.mean(0), 0, atol=1e-5)  # standardised on train
    assert T.make_stream("sklearn_hetero", "2").names == ["iris", "wine"]
    assert T.make_stream("sklearn_hetero", "digits,iris").names == ["digits", "iris"]


def test_permuted_mnist_from_idx_files():
    s = T.make_stream("permuted_mnist", "2", data_dir=MNIST_DIR, max_train=1000)
    t0 = s[0]
    assert t0.x_train.shape == (1000, 784) and t0.x_valid.shape == (5000, 784)
    assert t0.x_test.shape == (10000, 784) and t0.num_classes == 10
    assert t0.metadata["permutation_seed"] == T.MNIST_PERMUTATION_SEED
    perm = np.random.RandomState(T.MNIST_PERMUTATION_SEED).permutation(784)
    assert not np.array_equal(perm, np.arange(784))  # task 0 is permuted too
    from den_jax.data.idx import load_idx_dataset

    x, _ = load_idx_dataset(MNIST_DIR, "test")
    assert np.allclose(t0.x_test, x.reshape(-1, 784)[:, perm] / 255.0)


@pytest.mark.parametrize(
    "dataset, tasks, message",
    [
        ("mnist", None, "unknown dataset 'mnist'"),
        ("sklearn_hetero", "iris,cats", "sklearn_hetero tasks must be distinct names"),
        ("sklearn_hetero", "9", "has 4 tasks"),
        ("sklearn_hetero", "iris,iris", "distinct"),
        ("permuted_mnist", "ten", "expected a positive integer"),
        ("permuted_mnist", "0", "positive integer"),
    ],
)
def test_bad_dataset_and_tasks_rejected(dataset, tasks, message):
    with pytest.raises(ValueError, match=message):
        T.make_stream(dataset, tasks, data_dir=MNIST_DIR)


def test_missing_mnist_dir_rejected(tmp_path):
    with pytest.raises(ValueError, match="MNIST idx files not found"):
        T.make_stream("permuted_mnist", "2", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs data_dir"):
        T.make_stream("permuted_mnist", "2", data_dir=None)


@pytest.mark.parametrize(
    "tasks, message",
    [
        (None, "needs --tasks"),
        ("permute:x", "permute:N with an integer"),
        ("permute:0", "positive integer"),
        ("classes:0", "needs >= 2 distinct"),
        ("classes:0,1/1,2", "more than one task"),
        ("classes:0,a", "groups of integers"),
        ("classes:0,9", r"classes \[9\] do not occur"),
        ("split:2", "expected permute:N or classes"),
    ],
)
def test_bad_npz_tasks_rejected(tmp_path, tasks, message):
    with pytest.raises(ValueError, match=message):
        T.make_stream("npz:" + _npz(tmp_path), tasks)


def test_bad_npz_files_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        T.make_stream("npz:" + str(tmp_path / "no.npz"), "permute:2")
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['y_test'\]"):
        T.make_stream("npz:" + _npz(tmp_path, y_test=None), "permute:2")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read npz"):
        T.make_stream("npz:" + str(bad), "permute:2")
    with pytest.raises(ValueError, match="integer labels"):
        T.make_stream("npz:" + _npz(tmp_path, y_train=np.zeros(60) + 0.5), "permute:2")
    with pytest.raises(ValueError, match="features"):
        T.make_stream("npz:" + _npz(tmp_path, x_test=np.zeros((30, 5), np.uint8)), "permute:2")


def test_fingerprint_is_content_not_path(tmp_path):
    a = T.make_stream("npz:" + _npz(tmp_path), "permute:3")
    assert T.stream_fingerprint(a) == a.fingerprint() and len(a.fingerprint()) == 64
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(tmp_path / "tiny.npz", moved / "tiny.npz")
    b = T.make_stream("npz:" + str(moved / "tiny.npz"), "permute:3")
    assert b.fingerprint() == a.fingerprint()  # same bytes elsewhere: same data
    # one pixel of one training image replaced under the same path: a different stream
    src = dict(np.load(str(moved / "tiny.npz")))
    src["x_train"][5, 1, 1] ^= 1
    np.savez(str(moved / "tiny.npz"), **src)
    c = T.make_stream("npz:" + str(moved / "tiny.npz"), "permute:3")
    assert c.fingerprint() != a.fingerprint()
    assert T.make_stream("npz:" + str(moved / "tiny.npz"), "permute:2").fingerprint() != (
        c.fingerprint()
    )


def test_lazy_fingerprint_equals_hashing_every_task(tmp_path):
    s = T.make_stream("npz:" + _npz(tmp_path), "permute:2")
    tasks = [s[i] for i in range(len(s))]
    eager = T.TaskStream(s.dataset, s.infos, lambda i: tasks[i], s.shared_input_dim)
    other = T.stream_fingerprint(tasks)
    assert len(other) == 64
    # the lazy hash covers base arrays and permutations; it changes with the permutation seed
    assert (
        s.fingerprint() != T.make_stream("npz:" + _npz(tmp_path), "permute:2", seed=1).fingerprint()
    )
    assert (
        eager.fingerprint()
        == T.TaskStream(s.dataset, s.infos, lambda i: tasks[i], s.shared_input_dim).fingerprint()
    )


def test_sklearn_fingerprint_is_stable():
    assert T.make_stream("sklearn_hetero", "2").fingerprint() == (
        T.make_stream("sklearn_hetero", "2").fingerprint()
    )
    assert T.make_stream("sklearn_hetero", "2").fingerprint() != (
        T.make_stream("sklearn_hetero", "2", seed=1).fingerprint()
    )


def test_task_refuses_nan_and_bad_labels():
    x = np.zeros((6, 2), np.float32)
    y = np.array([0, 1, 0, 1, 0, 1], np.int32)
    T.Task("t", x, y, x[:0], y[:0], x, y, 2)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"task 't' test split x: non-finite value nan at row 4"):
        T.Task("t", x, y, x[:0], y[:0], bad, y, 2)
    with pytest.raises(ValueError, match=r"task 't' train split labels: label 2 at index 3"):
        T.Task("t", x, np.array([0, 1, 0, 2, 0, 1], np.int32), x[:0], y[:0], x, y, 2)
