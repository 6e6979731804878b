"""The PyTorch DER reference protocol and the side-by-side stream of ``benchmarks.der_protocol``.

Tiny shapes only: the PyTorch tests need the optional ``torch`` extra and are skipped
without it; the stream and command-line tests need neither torch nor a dataset.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import der_protocol, der_protocol_stream, mnist_stream


def _tiny_stream(per_class: int = 4, size: int = 8, classes: int = 6, init: int = 4):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class)
    templates = rng.integers(30, 226, (classes, 1, 1, 1))
    x = np.clip(templates[y] + rng.normal(0, 40, (len(y), size, size, 1)), 0, 255)
    x = x.astype(np.uint8)
    order = mnist_stream.class_order(classes, 1993)
    sizes = tuple(mnist_stream.step_sizes(classes, init, classes - init))
    yr = mnist_stream.remap_labels(y, order)
    return mnist_stream.Stream(x, yr, x[::2], yr[::2], order, sizes)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on busy cores OpenMP's spinning threads make tiny nets ~7x slower."""
    torch = pytest.importorskip("torch", reason="the optional torch extra is not installed")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_torch_protocol_runs_tiny_stream(one_torch_thread):
    from benchmarks import der_torch_protocol as dtp

    stream = _tiny_stream()
    cfg = dtp.ProtocolConfig(
        base_width=4,
        first_epochs=1,
        later_epochs=1,
        batch_size=8,
        memory=12,
        mean=(0.5,),
        std=(0.25,),
        seed=0,
    )
    res = dtp.run_protocol(stream, cfg, log=lambda _: None)
    assert res["num_seen"] == [4, 6]
    assert len(res["top1_curve"]) == 2 and res["finite"]
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in res["top1_curve"])
    assert math.isfinite(res["avg_incremental_accuracy"])
    # Step 1 trains on its 2 new classes plus the memory of step 0: 12 // 4 = 3 per class.
    assert res["pool_sizes"] == [16, 8 + 4 * 3]
    assert res["train_images"] == res["pool_sizes"]  # one epoch each
    assert res["memory_sizes"] == [12, 6 * 2]  # 12 // 6 = 2 per class after step 1
    assert res["weight_align_gamma"][0] is None and res["weight_align_gamma"][1] > 0


def test_torch_network_expand_freezes_and_inherits():
    torch = pytest.importorskip("torch", reason="the optional torch extra is not installed")
    from benchmarks import der_torch_protocol as dtp

    torch.manual_seed(0)
    net = dtp.DERNetwork.first(4, 1, 2)
    nxt = net.expand(3)
    assert len(nxt.old) == 1 and nxt.num_old == 2 and nxt.num_seen == 5
    assert not any(p.requires_grad for p in nxt.old.parameters())
    f = net.new.feature_dim
    assert torch.equal(nxt.fc.weight[:2, :f], net.fc.weight)
    assert torch.equal(nxt.new.conv0.weight, net.new.conv0.weight)  # the new one is a copy
    assert nxt.new.conv0.weight is not net.new.conv0.weight
    nxt.train()
    assert not nxt.old[0].training and nxt.new.training
    assert nxt.aux.out_features == 4
    gamma = dtp.weight_align(nxt)
    norms = nxt.fc.weight.norm(dim=1)
    assert gamma > 0
    assert torch.allclose(norms[2:].mean(), norms[:2].mean(), rtol=1e-5)


def test_torch_side_command_matches_the_stream(tmp_path):
    pytest.importorskip("torch", reason="the optional torch extra is not installed")
    from benchmarks import der_torch_protocol as dtp

    s = der_protocol_stream.stream_settings("mnist5")
    argv = der_protocol_stream.torch_command(s, str(tmp_path), str(tmp_path / "r.json"))[3:]
    a = dtp.build_parser().parse_args(argv)
    parsed = vars(dtp.config_from_args(a))
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in parsed.items()}
    assert der_protocol_stream.torch_config_mismatches(s, cfg, vars(a)) == {}


def test_stream_equals_den_jax_stream(tmp_path):
    from den_jax.data import images

    rng = np.random.default_rng(1)
    src, dst = tmp_path / "raw", tmp_path / "padded"
    src.mkdir()
    for split, n in (("train", 60), ("test", 30)):
        img, lab = mnist_stream.FILES[split]
        mnist_stream.write_idx(str(src / img), rng.integers(0, 256, (n, 28, 28)))
        mnist_stream.write_idx(str(src / lab), np.arange(n) % 10)
    folder = mnist_stream.prepare_padded_idx(str(src), str(dst), 32)
    ours = mnist_stream.load_stream(
        folder, init_classes=2, increment=2, train_per_class=4, test_per_class=2, seed=7
    )
    tr, te, mean, std = images.load_data("mnist", folder)
    ref = images.StreamData.from_uint8(
        tr,
        te,
        mean=mean,
        std=std,
        num_classes=10,
        init_classes=2,
        increment=2,
        order_seed=1993,
        train_per_class=4,
        test_per_class=2,
        seed=7,
    )
    assert ours.x_train.shape == (40, 32, 32, 1)
    np.testing.assert_array_equal(ours.x_train, ref.x_train)
    np.testing.assert_array_equal(ours.y_train, ref.y_train)
    np.testing.assert_array_equal(ours.x_test, ref.x_test)
    np.testing.assert_array_equal(ours.y_test, ref.y_test)
    np.testing.assert_array_equal(ours.class_order, ref.class_order)
    assert ours.sizes == ref.sizes
    assert mnist_stream.fingerprint(
        ours.x_train, ours.y_train, ours.class_order
    ) == mnist_stream.fingerprint(ref.x_train, ref.y_train, ref.class_order)
    raw = mnist_stream.read_idx(str(src / mnist_stream.FILES["train"][0]))
    np.testing.assert_array_equal(tr[0][:, 2:30, 2:30, 0], raw)  # centred zero padding
    assert not tr[0][:, :2].any() and not tr[0][:, 30:].any()


def test_mnist5_dry_run_parses_our_command(tmp_path, capsys):
    info = der_protocol.main(["--stream", "mnist5", "--dry-run", "--data-dir", str(tmp_path)])
    cfg = info["jax_config"]
    assert info["jax_config_mismatches"] == {}
    assert (cfg["dataset"], cfg["init_classes"], cfg["increment"]) == ("mnist", 2, 2)
    assert (cfg["first_epochs"], cfg["later_epochs"], cfg["batch_size"]) == (4, 4, 32)
    assert (cfg["memory"], cfg["memory_per_class"], cfg["train_per_class"]) == (100, None, 300)
    assert (cfg["base_width"], cfg["bias_correction"]) == (16, "weight_align")
    assert cfg["first_milestones"] == cfg["later_milestones"] == []
    assert (cfg["first_lr"], cfg["first_wd"], cfg["later_wd"]) == (0.1, 5e-4, 2e-4)
    assert "--torch" not in info["jax_command"] and "der_torch_protocol" in info["torch_command"]
    assert '"jax_config_mismatches": {}' in capsys.readouterr().out


def test_step_costs_against_the_cost_model():
    c = der_protocol_stream.step_costs([10.0, 20.0, 15.0], [100, 100, 50])
    assert c["images_per_s"] == [10.0, 5.0, 50 / 15]
    np.testing.assert_allclose(c["ratio_per_image_vs_step1"], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(c["cost_model"], [1.0, 4 / 3, 5 / 3])
    assert (
        c["within_bound"]
        == [None, 2.0 <= 1.3 * 4 / 3, 3.0 <= 1.3 * 5 / 3]
        == [
            None,
            False,
            False,
        ]
    )
    assert der_protocol_stream.step_costs([10.0, 12.0], [100, 100])["within_bound"] == [None, True]
