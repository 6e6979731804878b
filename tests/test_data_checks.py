"""den_jax.data.checks: non-finite inputs, bad labels and unseen test classes are refused."""

import io
import logging
import pickle
import tarfile

import jax.numpy as jnp
import numpy as np
import pytest

from den_jax.data import cifar100
from den_jax.data.checks import check_finite, check_labels, check_split_classes, check_targets

WHAT = "task 'mnist_3' train split"


def test_finite_passes_and_integers_always_pass():
    check_finite(np.ones((3, 2), np.float32), what=WHAT)
    check_finite(jnp.zeros((2, 2)), what=WHAT)
    check_finite(np.arange(4), what=WHAT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_named_with_row_and_column(bad):
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = bad
    x[3, 0] = bad
    with pytest.raises(ValueError, match=r"task 'mnist_3' train split.*row 2, column 1.*2 of 12"):
        check_finite(x, what=WHAT)


def test_non_numeric_refused():
    with pytest.raises(ValueError, match="numeric"):
        check_finite(np.array(["a", "b"]), what=WHAT)


def test_labels_in_range_pass():
    check_labels(np.array([0, 1, 2, 1], np.int32), 3, what=WHAT)
    check_labels(jnp.array([0, 1]), 2, what=WHAT)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, 99, 2]), r"label 99 at index 2 is outside \[0, 10\)"),
        (np.array([0, -1, 2]), r"label -1 at index 1 is outside \[0, 10\)"),
        (np.array([0.0, 1.5]), "integer dtype, got float64"),
        (np.array([True, False]), "integer dtype, got bool"),
        (np.zeros((2, 2), np.int32), r"shape \[N\]"),
    ],
)
def test_bad_labels_named(labels, message):
    with pytest.raises(ValueError, match=message) as err:
        check_labels(labels, 10, what=WHAT)
    assert WHAT in str(err.value)


def test_targets_labels_or_finite_matrix():
    check_targets(np.array([0, 1]), 2, what=WHAT)
    check_targets(np.full((2, 3), 0.5, np.float32), 3, what=WHAT)
    with pytest.raises(ValueError, match=r"targets \[N, 3\]"):
        check_targets(np.zeros((2, 4), np.float32), 3, what=WHAT)
    with pytest.raises(ValueError, match="non-finite"):
        check_targets(np.array([[np.nan, 1.0]]), 2, what=WHAT)
    with pytest.raises(ValueError, match="label 5 at index 0"):
        check_targets(np.array([5]), 2, what=WHAT)


def test_split_classes(caplog):
    check_split_classes(np.array([0, 1, 2]), np.array([2, 0, 1]), what="task 't'")
    with pytest.raises(ValueError, match=r"task 't'.*test labels \[7\].*test index 1"):
        check_split_classes(np.array([0, 1, 2]), np.array([0, 7, 7]), what="task 't'")
    with pytest.raises(ValueError, match="at least two classes"):
        check_split_classes(np.array([0, 1]), np.array([1, 1]), what="task 't'")
    with pytest.raises(ValueError, match="0 samples"):
        check_split_classes(np.array([0, 1]), np.array([], np.int32), what="task 't'")
    with caplog.at_level(logging.WARNING):
        check_split_classes(np.array([0, 1, 2]), np.array([0, 1]), what="task 't'")
    assert "absent from the test split" in caplog.text


# ----------------------------------------------------------------------------- CIFAR-100 files


def _cifar_blob(n=4):
    rng = np.random.default_rng(0)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"fine_labels": list(range(n)),
    }


def _write_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_cifar100_reads_a_good_archive_and_folder(tmp_path):
    raw = pickle.dumps(_cifar_blob())
    _write_archive(tmp_path / cifar100.ARCHIVE, {"cifar-100-python/train": raw})
    x, y = cifar100.load_cifar100(str(tmp_path), "train")
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.tolist() == [0, 1, 2, 3]
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "test").write_bytes(raw)
    x2, _ = cifar100.load_cifar100(str(tmp_path), "test")
    np.testing.assert_array_equal(x, x2)


def _damage(tmp_path, fault):
    """Writes a damaged CIFAR-100 source; returns (split, file named, expected message)."""
    archive = tmp_path / cifar100.ARCHIVE
    good = pickle.dumps(_cifar_blob())
    folder = tmp_path / "cifar-100-python"
    if fault == "not_gzip":  # tarfile.ReadError
        archive.write_bytes(b"this is not an archive" * 20)
        return "train", archive, "expected a gzip-compressed tar archive"
    if fault == "truncated_gzip":  # EOFError / ReadError inside the stream
        _write_archive(archive, {"cifar-100-python/train": good})
        raw = archive.read_bytes()
        archive.write_bytes(raw[: len(raw) // 2])
        return "train", archive, "cannot read"
    if fault == "bad_gzip_crc":  # zlib.error / BadGzipFile in the deflate data
        _write_archive(archive, {"cifar-100-python/train": good})
        raw = bytearray(archive.read_bytes())
        for i in range(20, min(60, len(raw) - 8)):
            raw[i] ^= 0x5A
        archive.write_bytes(bytes(raw))
        return "train", archive, "cannot read"
    if fault == "missing_member":  # KeyError from tarfile
        _write_archive(archive, {"cifar-100-python/test": good})
        return "train", archive, "expected a member 'cifar-100-python/train'"
    folder.mkdir()
    path = folder / "train"
    if fault == "not_pickle":  # pickle.UnpicklingError
        path.write_bytes(b"\x80\x05garbage that is no pickle")
    elif fault == "truncated_pickle":  # EOFError
        path.write_bytes(good[: len(good) // 2])
    elif fault == "missing_key":  # KeyError for a key
        path.write_bytes(pickle.dumps({b"data": _cifar_blob()[b"data"]}))
        return "train", path, r"key\(s\) \['fine_labels'\] missing"
    elif fault == "wrong_shape":  # ValueError from a reshape
        blob = _cifar_blob()
        blob[b"data"] = blob[b"data"][:, :1000]
        path.write_bytes(pickle.dumps(blob))
        return "train", path, r"expected 'data' uint8 \[N, 3072\], got uint8 \[4, 1000\]"
    elif fault == "label_count":
        blob = _cifar_blob()
        blob[b"fine_labels"] = [0, 1]
        path.write_bytes(pickle.dumps(blob))
        return "train", path, r"'fine_labels' \[4\]"
    elif fault == "not_a_dict":
        path.write_bytes(pickle.dumps([1, 2, 3]))
        return "train", path, "got a list"
    return "train", path, "cannot read.*expected a CIFAR-100 python pickle"


@pytest.mark.parametrize(
    "fault",
    ["not_gzip", "truncated_gzip", "bad_gzip_crc", "missing_member", "not_pickle",
     "truncated_pickle", "missing_key", "wrong_shape", "label_count", "not_a_dict"],
)  # fmt: skip
def test_cifar100_damaged_files_named(tmp_path, fault):
    split, path, message = _damage(tmp_path, fault)
    with pytest.raises(ValueError, match=message) as err:
        cifar100.load_cifar100(str(tmp_path), split)
    assert str(path) in str(err.value), str(err.value)
