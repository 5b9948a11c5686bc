"""Data: the two pipelines agree, augmentation is seeded and real, the decode cache is reused and rebuilt,
and the on-disk formats of MNIST / CIFAR-10 / CIFAR-100 are read as torchvision reads them."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.cli import compose_config

from phicenter import data
from phicenter.config import ConfigError, settings
from phicenter.method import seeding

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _splits(shape=(3, 8, 8), n_train=130, seed=0):
    return data.load("synthetic", ".", val_size=30, n_train=n_train + 30, n_test=41, shape=shape, seed=seed)


def _flat(batches):
    """(x, y) pairs of an iterable that may yield groups (lists of pairs)."""
    out = []
    for item in batches:
        single = isinstance(item, (tuple, list)) and isinstance(item[0], torch.Tensor)
        out.extend([item] if single else list(item))
    return out


# --- the two pipelines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 8, 8)], ids=["gray", "rgb"])
def test_fast_and_torchvision_pipelines_give_the_same_batches(shape):
    s = _splits(shape)
    fast = data.make_loaders(s, 32, seed=7, eval_batch_size=16, pipeline="fast")
    tv = data.make_loaders(s, 32, seed=7, eval_batch_size=16, pipeline="torchvision")
    assert isinstance(tv[0], data.LoaderBatches) and isinstance(tv[0].loader, torch.utils.data.DataLoader)
    for round_index, epoch in [(0, 0), (0, 1), (3, 2)]:
        for f, t in zip(fast, tv):
            f.set_epoch(round_index, epoch)
            t.set_epoch(round_index, epoch)
            fb, tb = list(f), list(t)
            assert len(fb) == len(tb) == len(f) == len(t)
            for (xf, yf), (xt, yt) in zip(fb, tb):
                assert xf.dtype == xt.dtype == torch.float32 and xf.shape == xt.shape
                assert torch.equal(yf, yt)  # same samples, same order
                torch.testing.assert_close(xf, xt, rtol=1e-6, atol=1e-6)  # same values


def test_shuffled_order_depends_on_seed_round_and_epoch_only():
    s = _splits()

    def labels(seed, r, e):
        b = data.make_loaders(s, 50, seed=seed)[0]
        b.set_epoch(r, e)
        return torch.cat([y for _, y in b])

    base = labels(0, 1, 2)
    assert torch.equal(base, labels(0, 1, 2))
    assert sorted(base.tolist()) == sorted(s.y_train.tolist())  # a permutation: every sample once
    for other in (labels(1, 1, 2), labels(0, 2, 2), labels(0, 1, 3)):
        assert not torch.equal(base, other)


def test_grouped_batches_are_the_same_batches_in_lists():
    s = _splits()
    for pipeline in ("fast", "torchvision"):
        single = data.make_loaders(s, 16, seed=3, pipeline=pipeline)[0]
        grouped = data.make_loaders(s, 16, seed=3, pipeline=pipeline, group=4)[0]
        items = list(grouped)
        assert [len(i) for i in items] == [4, 4, 1] and len(grouped) == len(items)
        for (x1, y1), (x2, y2) in zip(_flat(single), _flat(items), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_groups_are_made_lazily_and_in_order():
    s = _splits()
    b = data.make_loaders(s, 16, seed=3, group=4)[0]
    first, second, *_ = iter(b)  # the loop may fetch one group ahead ...
    with pytest.raises(RuntimeError, match="out of order"):
        list(second)  # ... but consumes them in order
    b2 = data.make_loaders(s, 16, seed=3, group=4)[0]
    groups = iter(b2)
    g1, g2 = next(groups), next(groups)
    assert len(list(g1)) == 4 and len(list(g2)) == 4


def test_unknown_pipeline_is_one_clear_error():
    with pytest.raises(data.DataError, match="dataset.pipeline"):
        data.make_loaders(_splits(), 16, pipeline="dali")


# --- augmentation -----------------------------------------------------------------------------------------


def _crops_and_flips(img: torch.Tensor, pad: int = 4):
    """Every image RandomCrop(padding=pad) + RandomHorizontalFlip can make from img (C×H×W, uint8)."""
    c, h, w = img.shape
    p = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = p[:, dy : dy + h, dx : dx + w]
            yield crop
            yield crop.flip(-1)


def test_augment_is_a_padded_crop_and_flip_of_each_image():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = data.augment(x, seeding.generator(0, "t"))
    assert out.shape == x.shape and out.dtype == torch.uint8
    for a, b in zip(x, out):
        assert any(torch.equal(b, cand) for cand in _crops_and_flips(a))
    assert not torch.equal(out, x)


@pytest.mark.parametrize("pipeline", ["fast", "torchvision"])
def test_augmentation_is_seeded_and_changes_images(pipeline):
    s = _splits((3, 8, 8))

    def epoch(seed, augment, r=0, e=0):
        b = data.make_loaders(s, 40, seed=seed, augment=augment, pipeline=pipeline)[0]
        b.set_epoch(r, e)
        return [(x.clone(), y.clone()) for x, y in b]

    a1, a2, plain = epoch(5, True), epoch(5, True), epoch(5, False)
    for (x1, y1), (x2, y2), (_, y0) in zip(a1, a2, plain, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # same seed: the same images
        assert torch.equal(y1, y0)  # augmentation never changes the order
    xa, x0 = torch.cat([x for x, _ in a1]), torch.cat([x for x, _ in plain])
    changed = (xa - x0).abs().flatten(1).amax(1) > 1e-6
    assert changed.float().mean() > 0.5  # it does change (most) images
    other_epoch = torch.cat([x for x, _ in epoch(5, True, e=1)])
    assert not torch.allclose(
        torch.cat([x for x, _ in epoch(5, True, e=0)]).sort(0).values, other_epoch.sort(0).values
    )  # a new epoch draws new crops
    # eval loaders are never augmented
    val = data.make_loaders(s, 40, seed=5, augment=True, pipeline=pipeline, eval_batch_size=40)[1]
    val_plain = data.make_loaders(s, 40, seed=5, augment=False, pipeline=pipeline, eval_batch_size=40)[1]
    for (xa_, _), (xb_, _) in zip(val, val_plain):
        assert torch.equal(xa_, xb_)


def test_channel_stats_are_exact():
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = data.channel_stats(x)
    xf = x.double() / 255
    torch.testing.assert_close(mean, xf.mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(std, xf.std(dim=(0, 2, 3)).float())


# --- on-disk formats --------------------------------------------------------------------------------------


def _write_idx(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def fake_mnist(root: Path, n_train=40, n_test=12, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        _write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", y)
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def fake_cifar10(root: Path, per_batch=4, n_test=6, seed=0) -> dict:
    """cifar-10-batches-py as distributed: pickled dicts with 'data' (N×3072 uint8, channel-major) and
    'labels', five train batches, a test batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        _pickle(
            folder / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": y,
                "data": x,
                "filenames": [f"img{i}_{j}.png" for j in range(per_batch)],
            },
        )
        xs.append(x), ys.extend(y)
    xt = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    yt = rng.integers(0, 10, n_test).tolist()
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": yt,
            "data": xt,
            "filenames": [f"t{j}.png" for j in range(n_test)],
        },
    )
    _pickle(
        folder / "batches.meta",
        {"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072},
    )
    return {
        "x_train": np.concatenate(xs).reshape(-1, 3, 32, 32),
        "y_train": np.array(ys),
        "x_test": xt.reshape(-1, 3, 32, 32),
        "y_test": np.array(yt),
    }


def fake_cifar100(root: Path, n_train=24, n_test=8, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _pickle(
            folder / split,
            {
                "filenames": [f"{split}{j}.png" for j in range(n)],
                "batch_label": split,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": x,
            },
        )
        out[f"x_{split}"], out[f"y_{split}"] = x.reshape(-1, 3, 32, 32), np.array(fine)
    _pickle(
        folder / "meta",
        {"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": [f"c{k}" for k in range(20)]},
    )
    return out


def _same_as_written(raw: dict, written: dict) -> None:
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(raw[k], torch.as_tensor(written[k]).to(raw[k].dtype)), k
    assert raw["x_train"].dtype == torch.uint8 and raw["y_train"].dtype == torch.int64


def _torchvision_reads_the_same(raw, root, monkeypatch, cls: str, train: bool):
    """torchvision's own reader (its MD5 check switched off for the fake files) sees the same images."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    tv = getattr(torchvision.datasets, cls)(str(root), train=train, download=False)
    split = "train" if train else "test"
    assert torch.equal(raw[f"x_{split}"], torch.from_numpy(tv.data).permute(0, 3, 1, 2))
    assert raw[f"y_{split}"].tolist() == tv.targets


def test_cifar10_on_disk_format(tmp_path, monkeypatch):
    written = fake_cifar10(tmp_path)
    s = data.load("cifar10", tmp_path, download=False, val_size=5)
    assert s.input_shape == (3, 32, 32) and len(s.y_train) == 15 and len(s.y_val) == 5 and len(s.y_test) == 6
    raw = data.DATASETS["cifar10"](tmp_path, download=False)
    _same_as_written(raw, written)
    _torchvision_reads_the_same(raw, tmp_path, monkeypatch, "CIFAR10", train=True)


def test_cifar100_on_disk_format(tmp_path, monkeypatch):
    written = fake_cifar100(tmp_path)
    s = data.load("cifar100", tmp_path, download=False, val_size=4)
    assert s.input_shape == (3, 32, 32) and len(s.y_train) == 20 and len(s.y_test) == 8
    raw = data.DATASETS["cifar100"](tmp_path, download=False)
    _same_as_written(raw, written)
    _torchvision_reads_the_same(raw, tmp_path, monkeypatch, "CIFAR100", train=False)


def test_mnist_on_disk_format_through_torchvision(tmp_path):
    written = fake_mnist(tmp_path)
    raw = data.DATASETS["mnist"](tmp_path, download=False)
    assert raw["x_train"].shape == (40, 1, 28, 28)
    _same_as_written(raw, {k: (v[:, None] if k.startswith("x") else v) for k, v in written.items()})


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_missing_files_are_one_clear_error(tmp_path, name):
    with pytest.raises(data.DataError, match=str(tmp_path)):
        data.load(name, tmp_path, download=False)


def test_corrupt_cifar_batch_is_one_clear_error(tmp_path):
    fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(data.DataError, match="data_batch_3"):
        data.load("cifar10", tmp_path, download=False, val_size=5)


def _npz(path: Path, **arrays) -> Path:
    base = {
        "x_train": np.zeros((10, 4, 4), np.uint8),
        "y_train": np.arange(10) % 3,
        "x_test": np.zeros((5, 4, 4), np.uint8),
        "y_test": np.arange(5) % 3,
    }
    np.savez(path, **{k: v for k, v in {**base, **arrays}.items() if v is not None})
    return path


def test_npz_reads_every_split(tmp_path):
    x_val = np.full((4, 2, 4, 4), 7, np.uint8)
    f = _npz(
        tmp_path / "d.npz",
        x_train=np.zeros((10, 4, 4, 3), np.uint8),
        x_test=np.zeros((5, 4, 4, 3), np.uint8),
        x_val=np.full((4, 4, 4, 3), 7, np.uint8),
        y_val=np.array([[0], [1], [2], [1]]),
    )
    s = data.load("npz", tmp_path, path=str(f))
    assert s.input_shape == (3, 4, 4) and len(s.y_train) == 10 and s.y_val.tolist() == [0, 1, 2, 1]
    assert s.num_classes == 3 and torch.equal(s.x_val[:, :2], torch.from_numpy(x_val))


NPZ_BAD = {
    "a .npy, not an .npz": (lambda f: np.save(f, np.zeros(3)), "is not an .npz file"),
    "a pickled object array": (
        lambda f: _npz(f, x_train=np.array([object()] * 10)),
        "array x_train cannot be read (ValueError: Object arrays cannot be loaded",
    ),
    "x_val without y_val": (
        lambda f: _npz(f, x_val=np.zeros((2, 4, 4), np.uint8)),
        "x_val and y_val must be given together",
    ),
    "test lengths": (lambda f: _npz(f, y_test=np.zeros(6, np.int64)), "x_test has 5 images but y_test has 6 labels"),
    "val lengths": (
        lambda f: _npz(f, x_val=np.zeros((3, 4, 4), np.uint8), y_val=np.zeros(2, np.int64)),
        "x_val has 3 images but y_val has 2 labels",
    ),
    "float images": (
        lambda f: _npz(f, x_train=np.zeros((10, 4, 4), np.float32)),
        "x_train must be uint8 images, got float32",
    ),
    "flat images": (
        lambda f: _npz(f, x_test=np.zeros((5, 16), np.uint8)),
        "x_test must be N×H×W, N×C×H×W or N×H×W×C, got shape (5, 16)",
    ),
    "float labels": (
        lambda f: _npz(f, y_train=np.zeros(10, np.float64)),
        "y_train must be one integer label per image, got float64 of shape (10,)",
    ),
    "negative labels": (lambda f: _npz(f, y_test=np.array([0, 1, -1, 2, 0])), "y_test has a negative label (-1)"),
    "no test images": (
        lambda f: _npz(f, x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, np.int64)),
        "x_test has no images",
    ),
    "a truncated archive": (lambda f: (_npz(f), f.write_bytes(f.read_bytes()[:-30])), "is not an .npz file"),
}


@pytest.mark.parametrize("case", NPZ_BAD)
def test_bad_npz_is_one_clear_error_naming_the_file(tmp_path, case):
    """Each split is checked whole before any use; the command line turns these into one line and exit 2
    (tests/test_cli.py)."""
    make, message = NPZ_BAD[case]
    f = tmp_path / "d.npz"
    make(f)
    f = f if f.exists() else tmp_path / "d.npz.npy"  # np.save appends .npy
    with pytest.raises(data.DataError) as err:
        data.load("npz", tmp_path, path=str(f), val_size=2)
    assert str(err.value).startswith(f"dataset.path: {f}") and message in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


# --- the decode cache -------------------------------------------------------------------------------------


def _reader(decoder: str):
    """The module whose dataset functions call this decoder."""
    return data.cifar_reader if "cifar" in decoder else data.mnist_reader


def _count_decodes(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(_reader(name), name)

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(_reader(name), name, counting)
    return calls


def _fail(*a, **k):
    raise AssertionError("decoded although the cache is valid")


@pytest.mark.parametrize(
    "name,make,decoder", [("cifar10", fake_cifar10, "_decode_cifar"), ("mnist", fake_mnist, "_decode_mnist")]
)
def test_cache_is_reused(tmp_path, monkeypatch, name, make, decoder):
    make(tmp_path)
    first = data.load(name, tmp_path, download=False, val_size=5)
    cache = data.cache_path(tmp_path, name)
    assert cache.is_file()
    assert not list(cache.parent.glob("*.tmp"))  # the temporary file was renamed, not left behind
    monkeypatch.setattr(_reader(decoder), decoder, _fail)
    second = data.load(name, tmp_path, download=False, val_size=5)
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(first, k), getattr(second, k)), k


def test_stale_cache_is_rebuilt(tmp_path, monkeypatch):
    fake_cifar10(tmp_path, seed=0)
    data.load("cifar10", tmp_path, download=False, val_size=5)
    newer = fake_cifar10(tmp_path, seed=1, n_test=9)  # the source files changed
    st = (tmp_path / "cifar-10-batches-py" / "test_batch").stat()
    os.utime(tmp_path / "cifar-10-batches-py" / "test_batch", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = _count_decodes(monkeypatch, "_decode_cifar")
    s = data.load("cifar10", tmp_path, download=False, val_size=5)
    assert calls == [1]
    assert torch.equal(s.x_test, torch.from_numpy(newer["x_test"]))
    data.load("cifar10", tmp_path, download=False, val_size=5)  # and the new cache is used
    assert calls == [1]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    written = fake_cifar10(tmp_path)
    data.load("cifar10", tmp_path, download=False, val_size=5)
    cache = data.cache_path(tmp_path, "cifar10")
    blob = bytearray(cache.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":  # one byte inside the image data (the bulk of the file): only a checksum sees it
        raw = np.concatenate([written["x_train"].reshape(-1)[:64]])
        at = bytes(blob).find(raw.tobytes())
        assert at > 0
        blob[at + 10] ^= 0xFF
    elif damage == "garbage":
        blob = bytearray(b"\x00" * 100)
    else:
        blob = bytearray()
    cache.write_bytes(bytes(blob))
    calls = _count_decodes(monkeypatch, "_decode_cifar")
    s = data.load("cifar10", tmp_path, download=False, val_size=5)
    assert calls == [1]
    raw = data.DATASETS["cifar10"](tmp_path, download=False)  # rebuilt cache: valid again
    assert calls == [1]
    _same_as_written(raw, written)
    assert len(s.y_train) == 15


def test_read_only_data_dir_gets_no_cache_and_no_error(tmp_path):
    fake_cifar10(tmp_path)
    mode = tmp_path.stat().st_mode
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # read-only, even for root
    try:
        s = data.load("cifar10", tmp_path, download=False, val_size=5)
        assert len(s.y_train) == 15
        assert not (tmp_path / data.CACHE_DIR).exists()
    finally:
        tmp_path.chmod(mode)


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="no MNIST in ../shared/data")
def test_real_mnist_from_the_read_only_shared_folder():
    before = sorted(p.name for p in SHARED_DATA.iterdir())
    s = data.load("mnist", SHARED_DATA, download=False)
    assert sorted(p.name for p in SHARED_DATA.iterdir()) == before  # nothing written there
    assert (len(s.y_train), len(s.y_val), len(s.y_test)) == (55000, 5000, 10000)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert abs(float(s.mean) - 0.1307) < 2e-3 and abs(float(s.std) - 0.3081) < 2e-3
    fast = data.make_loaders(s, 100, seed=0, pipeline="fast")[0]
    tv = data.make_loaders(s, 100, seed=0, pipeline="torchvision")[0]
    for _, ((xf, yf), (xt, yt)) in zip(range(3), zip(fast, tv)):
        assert torch.equal(yf, yt)
        torch.testing.assert_close(xf, xt, rtol=1e-6, atol=1e-6)


def test_normalize_imagenet_uses_torchvisions_statistics():
    def load(**kw):
        return data.load("synthetic", ".", val_size=10, n_train=40, n_test=10, **kw)

    s = load(shape=(3, 8, 8), normalize="imagenet")
    assert s.mean.tolist() == pytest.approx([0.485, 0.456, 0.406]) and s.std.tolist() == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    own = load(shape=(3, 8, 8))  # default: the train split's own statistics
    assert torch.equal(own.mean, data.channel_stats(own.x_train)[0])
    with pytest.raises(data.DataError, match="normalize=imagenet needs 3-channel images"):
        load(shape=(1, 8, 8), normalize="imagenet")
    with pytest.raises(ConfigError, match="dataset.normalize must be dataset or imagenet, got 'cifar'"):
        settings(compose_config("dataset.normalize=cifar"))  # checked once, by the schema
