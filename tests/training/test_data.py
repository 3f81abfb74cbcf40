"""Tests for procres.training.data: tiny archives in the official CIFAR format, the digits split, and the
device loader against per-sample numpy references (float64)."""

import io
import os
import pickle
import struct
import tarfile
import warnings

import numpy as np
import pytest
import torch

from procres.training.cifar import DatasetError
from procres.training.data import _digits_arrays, augment_batch, CIFAR10_MEAN, CIFAR10_STD, DeviceLoader, DIGITS_MEAN, DIGITS_STD, load_dataset

# ---------------------------------------------------------------------------------------------
# official-format fixtures


class _Py2Pickler(pickle._Pickler):
    """Writes str/bytes as protocol-2 BINSTRING, as the Python 2 pickler that made the official
    CIFAR files did (they load as bytes under ``encoding="bytes"``)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin1")
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_dumps(obj):
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # the official files name numpy's pre-2.0 module path
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _images(rng, n):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _batch(images, labels, label_key="labels", **extra):
    d = {b"batch_label": b"tiny batch", label_key.encode(): [int(v) for v in labels],
         b"data": images.reshape(len(images), 3072), b"filenames": [b"f%d.png" % i for i in range(len(images))]}
    d.update({k.encode(): v for k, v in extra.items()})
    return d


def _write(root, folder, files, archive):
    """Write ``files`` ({name: pickled bytes}) as folder ``root/folder`` and as ``root/archive``."""
    (root / folder).mkdir(parents=True)
    for name, raw in files.items():
        (root / folder / name).write_bytes(raw)
    with tarfile.open(root / archive, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return root


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """(root, train images, train labels, test images, test labels); 5 batches of 8, test 6."""
    rng = np.random.default_rng(10)
    xs, ys = _images(rng, 40), rng.integers(0, 10, 40)
    tx, ty = _images(rng, 6), rng.integers(0, 10, 6)
    ys[0], ys[1] = 0, 9  # range ends
    files = {f"data_batch_{i + 1}": py2_dumps(_batch(xs[8 * i:8 * i + 8], ys[8 * i:8 * i + 8])) for i in range(5)}
    files["test_batch"] = py2_dumps(_batch(tx, ty))
    files["batches.meta"] = py2_dumps({b"label_names": [b"c%d" % i for i in range(10)],
                                       b"num_cases_per_batch": 8, b"num_vis": 3072})
    root = _write(tmp_path_factory.mktemp("c10"), "cifar-10-batches-py", files, "cifar-10-python.tar.gz")
    return root, xs, ys, tx, ty


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory):
    rng = np.random.default_rng(100)
    xs, ys, cs = _images(rng, 30), rng.integers(0, 100, 30), rng.integers(0, 20, 30)
    tx, ty, tc = _images(rng, 5), rng.integers(0, 100, 5), rng.integers(0, 20, 5)
    ys[0] = 99
    files = {
        "train": py2_dumps(_batch(xs, ys, "fine_labels", coarse_labels=[int(v) for v in cs])),
        "test": py2_dumps(_batch(tx, ty, "fine_labels", coarse_labels=[int(v) for v in tc])),
        "meta": py2_dumps({b"fine_label_names": [b"f%d" % i for i in range(100)],
                           b"coarse_label_names": [b"k%d" % i for i in range(20)]}),
    }
    root = _write(tmp_path_factory.mktemp("c100"), "cifar-100-python", files, "cifar-100-python.tar.gz")
    return root, xs, ys, cs, tx, ty, tc


def _cifar10_files(tmp_path, **override):
    """A CIFAR-10 folder with tiny valid files, some replaced by ``override`` raw bytes."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    files = {f"data_batch_{i}": py2_dumps(_batch(_images(rng, 2), [0, 1])) for i in range(1, 6)}
    files["test_batch"] = py2_dumps(_batch(_images(rng, 2), [2, 3]))
    files["batches.meta"] = py2_dumps({b"label_names": [b"c"] * 10})
    files.update(override)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return folder


# ---------------------------------------------------------------------------------------------
# CIFAR reading


def test_cifar10_reads_official_layout_pixels_and_channels(cifar10):
    root, xs, ys, tx, ty = cifar10
    d = load_dataset("cifar10", root / "cifar-10-python.tar.gz", val_size=0)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_x.shape == (40, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.val_x.shape == (0, 3, 32, 32) and d.val_y.shape == (0,)
    # independent index arithmetic on the raw rows: value (n, c, i, j) sits at column c*1024 + 32*i + j
    rows = xs.reshape(40, 3072)
    n, c, i, j = np.meshgrid(np.arange(40), np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    assert np.array_equal(d.train_x.numpy(), rows[n, c * 1024 + 32 * i + j])
    assert d.train_x[5, 1, 2, 3].item() == rows[5, 1024 + 64 + 3]  # green plane, row 2, column 3
    assert np.array_equal(d.train_y.numpy(), ys)
    assert np.array_equal(d.test_x.numpy(), tx) and np.array_equal(d.test_y.numpy(), ty)
    assert (d.num_classes, d.in_channels, d.image_size, d.flip, d.name) == (10, 3, 32, True, "cifar10")
    assert d.mean == CIFAR10_MEAN and d.std == CIFAR10_STD
    assert np.allclose(np.array(CIFAR10_MEAN) * 255, [125.3, 123.0, 113.9], atol=1e-9)  # docs/theory.md section 6
    assert np.allclose(np.array(CIFAR10_STD) * 255, [63.0, 62.1, 66.7], atol=1e-9)
    assert d.classes == tuple(f"c{k}" for k in range(10))


def test_cifar10_archive_folder_and_parents_agree(cifar10, tmp_path):
    root, *_ = cifar10
    paths = [root / "cifar-10-python.tar.gz", root / "cifar-10-batches-py", root,
             root / "cifar-10-batches-py" / "data_batch_1"]  # a file of the folder: the folder
    lone = tmp_path / "only_tar"
    lone.mkdir()
    (lone / "cifar-10-python.tar.gz").write_bytes((root / "cifar-10-python.tar.gz").read_bytes())
    paths.append(lone)  # a parent directory holding just the archive
    ref = load_dataset("cifar10", paths[0], val_size=7, seed=3)
    for p in paths[1:] + [str(paths[1])]:
        d = load_dataset("CIFAR-10", p, val_size=7, seed=3)
        for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            assert torch.equal(getattr(d, field), getattr(ref, field)), (p, field)


def test_cifar100_fine_and_coarse_labels(cifar100):
    root, xs, ys, cs, tx, ty, tc = cifar100
    d = load_dataset("cifar100", root, val_size=0)
    assert np.array_equal(d.train_x.numpy(), xs) and np.array_equal(d.train_y.numpy(), ys)
    assert np.array_equal(d.train_coarse_y.numpy(), cs) and np.array_equal(d.test_coarse_y.numpy(), tc)
    assert np.array_equal(d.test_x.numpy(), tx) and np.array_equal(d.test_y.numpy(), ty)
    assert d.num_classes == 100 and len(d.classes) == 100 and d.classes[99] == "f99"
    t = load_dataset("cifar100", root / "cifar-100-python.tar.gz", val_size=4, seed=1)
    f = load_dataset("cifar100", root / "cifar-100-python", val_size=4, seed=1)
    assert torch.equal(t.val_x, f.val_x) and torch.equal(t.val_coarse_y, f.val_coarse_y)
    # the coarse labels follow their images into the split
    both = torch.cat([t.train_x, t.val_x]).flatten(1)
    coarse = torch.cat([t.train_coarse_y, t.val_coarse_y])
    for k in range(30):
        row = (both == torch.from_numpy(xs[k]).flatten()).all(1).nonzero().item()
        assert coarse[row].item() == cs[k]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_are_accepted(tmp_path, protocol):
    rng = np.random.default_rng(1)
    img, timg = _images(rng, 2), _images(rng, 3)
    raw = pickle.dumps({"data": img.reshape(2, 3072), "labels": np.array([4, 5])}, protocol=protocol)
    test = pickle.dumps({"data": timg.reshape(3, 3072), "labels": [1, 2, 3]}, protocol=protocol)
    folder = _cifar10_files(tmp_path, data_batch_3=raw, test_batch=test)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning about a read-only numpy array
        d = load_dataset("cifar10", folder, val_size=0)
    assert torch.equal(d.train_x[4:6], torch.from_numpy(img)) and d.train_y[4:6].tolist() == [4, 5]
    assert torch.equal(d.test_x, torch.from_numpy(timg)) and d.test_y.tolist() == [1, 2, 3]


def test_validation_split_sizes_disjoint_and_seeded(cifar10):
    root, xs, *_ = cifar10
    a = load_dataset("cifar10", root, val_size=10, seed=0)
    b = load_dataset("cifar10", root, val_size=10, seed=0)
    c = load_dataset("cifar10", root, val_size=10, seed=1)
    assert len(a.train_x) == 30 and len(a.val_x) == 10 and len(a.val_y) == 10
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)
    # images are distinct random rows, so rows identify samples: train and val partition the 40
    ids = lambda t: {bytes(r) for r in t.flatten(1).numpy()}  # noqa: E731
    assert ids(a.train_x).isdisjoint(ids(a.val_x))
    assert ids(a.train_x) | ids(a.val_x) == {bytes(r) for r in xs.reshape(40, -1)}
    with pytest.raises(ValueError, match="val_size=40"):
        load_dataset("cifar10", root, val_size=40)
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("cifar10", root, val_size=-1)


# ---------------------------------------------------------------------------------------------
# broken inputs


def test_missing_inputs_name_path_and_expected_files(cifar10, tmp_path):
    root, *_ = cifar10
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="does not exist.*data_batch_1"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"{tmp_path}.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="lacks test_batch"):
        folder = _cifar10_files(tmp_path)
        (folder / "test_batch").unlink()
        load_dataset("cifar10", folder)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    assert issubclass(DatasetError, ValueError)


def test_cifar100_archive_given_as_cifar10_is_rejected(cifar100):
    root, *_ = cifar100
    with pytest.raises(DatasetError, match="cifar-100-python.tar.gz.*lacks data_batch_1"):
        load_dataset("cifar10", root / "cifar-100-python.tar.gz")
    # a data folder holding only CIFAR-100 (procres train --data DIR guesses cifar10 from the path)
    with pytest.raises(DatasetError, match="holds cifar100: pass dataset='cifar100' / --dataset cifar100"):
        load_dataset("cifar10", root)


def test_truncated_archive_is_rejected(cifar10, tmp_path):
    root, *_ = cifar10
    raw = (root / "cifar-10-python.tar.gz").read_bytes()
    for cut in (len(raw) // 2, 100, 5):
        bad = tmp_path / f"cut{cut}" / "cifar-10-python.tar.gz"
        bad.parent.mkdir()
        bad.write_bytes(raw[:cut])
        with pytest.raises(DatasetError, match="truncated|lacks") as info:
            load_dataset("cifar10", bad.parent)
        assert str(bad) in str(info.value)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DatasetError, match="not a readable tar archive"):
        load_dataset("cifar10", junk)


def test_damaged_gzip_archive_is_rejected_not_read_silently(cifar10, tmp_path):
    # The gzip trailer's CRC32 is what detects damaged content: an archive whose members all parse
    # but whose checksum fails must be refused, not half-trusted. A damaged tar header in the
    # middle ends tarfile's iteration silently: that must read as damage, not as "lacks".
    root, *_ = cifar10
    raw = bytearray((root / "cifar-10-python.tar.gz").read_bytes())
    raw[-8] ^= 0xFF  # CRC32 of the uncompressed tar
    bad = tmp_path / "crc" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="not a readable tar archive, or is truncated") as info:
        load_dataset("cifar10", bad)
    assert str(bad) in str(info.value)
    import gzip

    tar_bytes = bytearray(gzip.decompress((root / "cifar-10-python.tar.gz").read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(tar_bytes))) as tar:
        third = tar.getmembers()[2].offset
    tar_bytes[third + 100] ^= 0xFF  # the third member's mode field: its header checksum fails
    with tarfile.open(fileobj=io.BytesIO(bytes(tar_bytes))) as tar:  # the premise: iteration stops early
        assert len(tar.getmembers()) < 7
    hdr = tmp_path / "hdr" / "cifar-10-python.tar"
    hdr.parent.mkdir()
    hdr.write_bytes(bytes(tar_bytes))
    with pytest.raises(DatasetError, match="damaged") as info:
        load_dataset("cifar10", hdr)
    assert str(hdr) in str(info.value)


def test_truncated_pickle_in_folder_is_rejected(tmp_path):
    good = py2_dumps(_batch(_images(np.random.default_rng(0), 2), [0, 1]))
    folder = _cifar10_files(tmp_path, data_batch_2=good[: len(good) // 2])
    with pytest.raises(DatasetError, match="data_batch_2: not a readable CIFAR pickle"):
        load_dataset("cifar10", folder)


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\).*\(2, 3071\)"),
    ({b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, "shape"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "got list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"\[0, 10\).*\[0, 10\]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, r"\[0, 10\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 2]}, "must be 2 integer labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]}, "integer labels"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
    ([1, 2, 3], "expected a pickled dict"),
])
def test_malformed_batches_are_rejected(tmp_path, batch, message):
    folder = _cifar10_files(tmp_path, data_batch_4=py2_dumps(batch))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("cifar10", folder)
    assert str(folder / "data_batch_4") in str(info.value)


def test_malformed_meta_is_rejected(tmp_path):
    folder = _cifar10_files(tmp_path, **{"batches.meta": py2_dumps({b"label_names": [b"a"] * 9})})
    with pytest.raises(DatasetError, match="batches.meta.*10 names"):
        load_dataset("cifar10", folder)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvilEval:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (_Evil(marker), _EvilEval()):
        raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": payload}, protocol=2)
        folder = tmp_path / type(payload).__name__
        folder.mkdir()
        _cifar10_files(folder, test_batch=raw)
        with pytest.raises(DatasetError, match=r"test_batch: refused to load global (posix|os|nt|__builtin__|builtins)\.(system|eval)"):
            load_dataset("cifar10", folder)
    rot13 = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DatasetError, match=r"batches.meta: refused _codecs.encode\(str, 'rot13'\)"):
        load_dataset("cifar10", _cifar10_files(tmp_path, **{"batches.meta": rot13}))
    # the same archive member path is refused too
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            raw = pickle.dumps(_Evil(marker), protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(DatasetError, match="refused"):
        load_dataset("cifar10", tmp_path / "cifar-10-python.tar.gz")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# digits


def _bilinear_x2_reference(img):
    """float64 2x bilinear upsampling with half-pixel centres and edge clamping, (8, 8) -> (16, 16)."""
    n = img.shape[0]
    src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = src - lo
    m = np.zeros((2 * n, n))
    m[np.arange(2 * n), lo] += 1 - w
    m[np.arange(2 * n), hi] += w
    return m @ img @ m.T


def test_digits_shapes_split_and_pixels():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    assert d.train_x.shape == (1257, 1, 16, 16) and d.val_x.shape == (270, 1, 16, 16)
    assert d.test_x.shape == (270, 1, 16, 16) and d.train_x.dtype == torch.uint8
    assert (d.num_classes, d.in_channels, d.image_size, d.flip, d.name) == (10, 1, 16, False, "digits")
    assert set(d.train_y.tolist()) == set(range(10)) and set(d.test_y.tolist()) == set(range(10))
    raw = load_digits()
    ref = np.stack([_bilinear_x2_reference(im * 255.0 / 16.0) for im in raw.images])[:, None]
    x, y = _digits_arrays()  # sklearn's order
    assert np.abs(x.double().numpy() - ref).max() <= 0.5 + 1e-6  # rounded to the nearest grey level
    assert np.array_equal(y.numpy(), raw.target)
    # the three splits partition those 1,797 (image, label) pairs
    key = lambda xs, ys: sorted(bytes(a.numpy().ravel()) + bytes([int(b)]) for a, b in zip(xs, ys))  # noqa: E731
    parts = [(d.train_x, d.train_y), (d.val_x, d.val_y), (d.test_x, d.test_y)]
    assert key(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])) == key(x, y)


def test_digits_split_is_fixed_and_val_seeded():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_x, b.val_x)
    assert torch.equal(a.val_x, load_dataset("digits", seed=0).val_x)
    z = load_dataset("digits", val_size=0)
    assert len(z.train_x) == 1527 and len(z.val_x) == 0
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("digits", "some/path")
    with pytest.raises(ValueError, match="val_size=1527"):
        load_dataset("digits", val_size=1527)


def test_digits_constants_match_the_data():
    d = load_dataset("digits", val_size=0)  # the constants are over all 1,527 non-test images
    x = d.train_x.double() / 255
    assert abs(x.mean().item() - DIGITS_MEAN[0]) < 1e-4
    assert abs(x.std(unbiased=False).item() - DIGITS_STD[0]) < 1e-4


def test_digits_at_their_native_8x8():
    from sklearn.datasets import load_digits

    d, d16 = load_dataset("digits", val_size=0, image_size=8), load_dataset("digits", val_size=0)
    assert d.train_x.shape == (1527, 1, 8, 8) and (d.image_size, d.pad) == (8, 1) and d16.pad == 2
    assert torch.equal(d.train_y, d16.train_y) and torch.equal(d.test_y, d16.test_y)  # the same split
    raw = load_digits()
    x, y = _digits_arrays(8)
    assert np.abs(x.double().numpy()[:, 0] - raw.images * 255.0 / 16.0).max() <= 0.5 + 1e-6
    pixels = d.train_x.double() / 255  # the constants are over all 1,527 non-test images
    assert abs(pixels.mean().item() - d.mean[0]) < 1e-4 and abs(pixels.std(unbiased=False).item() - d.std[0]) < 1e-4
    with pytest.raises(ValueError, match="image_size 12"):
        load_dataset("digits", image_size=12)
    with pytest.raises(ValueError, match="image_size 8 is not available for cifar10"):
        load_dataset("cifar10", "x", image_size=8)


# ---------------------------------------------------------------------------------------------
# augmentation and the device loader


def _reference_crop_flip(x, offsets, flips, pad, mode):
    out = []
    for img, (r, c), f in zip(x.astype(np.float64), offsets, flips):
        p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="constant" if mode == "zeros" else "reflect")
        win = p[:, r:r + x.shape[2], c:c + x.shape[3]]
        out.append(win[:, :, ::-1] if f else win)
    return np.stack(out)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_augment_batch_matches_per_sample_reference(mode):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (12, 3, 7, 9), dtype=np.uint8)
    pad = 4 if mode == "zeros" else 3
    offsets = rng.integers(0, 2 * pad + 1, (12, 2))
    offsets[0], offsets[1] = (0, 0), (2 * pad, 2 * pad)
    flips = rng.random(12) < 0.5
    out = augment_batch(torch.from_numpy(x), torch.from_numpy(offsets), torch.from_numpy(flips), pad=pad, pad_mode=mode)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert np.array_equal(out.numpy().astype(np.float64), _reference_crop_flip(x, offsets, flips, pad, mode))


def _loader(x, y, **kw):
    kw.setdefault("mean", (0.5,) * x.shape[1])
    kw.setdefault("std", (0.25,) * x.shape[1])
    return DeviceLoader(x, y, **kw)


def _tiny(n=20, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n)


def test_eval_loader_normalises_in_order_without_dropping():
    x, y = _tiny(n=10)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    loader = DeviceLoader(x, y, batch_size=4, train=False, mean=mean, std=std)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    out = torch.cat([b[0] for b in batches]).double()
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    assert batches[0][0].dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert torch.equal(torch.cat([b[0] for b in loader]), torch.cat([b[0] for b in batches]))  # stateless


def test_train_crops_are_shifted_windows_and_flips_flip():
    x, y = _tiny(n=24, c=2, h=6, w=6)
    loader = _loader(x, y, batch_size=8, train=True, pad=2, pad_mode="zeros", flip=True, mean=(0, 0), std=(1, 1))
    padded = np.pad(x.numpy().astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)))
    seen_flip = seen_plain = 0
    for xb, yb in loader:
        assert xb.shape == (8, 2, 6, 6)
        for img, k in zip(xb.double().numpy() * 255, yb.tolist()):
            wins = [(f, padded[k, :, r:r + 6, c:c + 6]) for r in range(5) for c in range(5) for f in (0, 1)]
            hits = [f for f, wdw in wins if np.allclose(img, wdw[:, :, ::-1] if f else wdw, atol=1e-3)]
            assert hits, "output is not a (flipped) window of the zero-padded image"
            seen_flip += 1 in hits and 0 not in hits
            seen_plain += 0 in hits and 1 not in hits
    assert seen_flip > 0 and seen_plain > 0
    # flip only: each output is the image or its mirror, and the labels travel with the images
    only = _loader(x, y, batch_size=24, train=True, pad=0, flip=True, mean=(0, 0), std=(1, 1))
    xb, yb = next(iter(only))
    src = x[yb].double() / 255
    same = (xb.double() - src).abs().flatten(1).amax(1) < 1e-6
    mirrored = (xb.double() - src.flip(3)).abs().flatten(1).amax(1) < 1e-6
    assert bool((same | mirrored).all()) and mirrored.any() and same.any()
    noflip = _loader(x, y, batch_size=24, train=True, pad=0, flip=False, mean=(0, 0), std=(1, 1))
    xb, yb = next(iter(noflip))
    assert torch.allclose(xb.double(), x[yb].double() / 255, atol=1e-6)
    assert not torch.equal(yb, y)  # shuffled


def test_batches_are_deterministic_per_seed_and_vary_by_epoch():
    x, y = _tiny()

    def epoch_batches(seed, epoch):
        loader = _loader(x, y, batch_size=6, train=True, seed=seed)
        loader.set_epoch(epoch)
        return [b for b in loader]

    a, b, c = epoch_batches(0, 0), epoch_batches(0, 0), epoch_batches(1, 0)
    assert len(a) == 3  # 20 // 6, the partial batch dropped in training
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(a[0][1], epoch_batches(0, 1)[0][1])
    # (seed 1, epoch 0) is not (seed 0, epoch 1): seeds are mixed, not added
    assert not torch.equal(epoch_batches(1, 0)[0][1], epoch_batches(0, 1)[0][1])


def test_state_dict_resume_replays_the_remaining_batches(tmp_path):
    x, y = _tiny(n=26)
    kw = dict(batch_size=4, train=True, seed=7, pad=2, pad_mode="reflect")
    full = _loader(x, y, **kw)
    reference = [[b for b in full] for _ in range(3)]  # epochs 0, 1, 2 (auto-advancing)
    assert full.epoch == 3 and len(reference[0]) == 6

    run = _loader(x, y, **kw)
    list(run)  # epoch 0
    run.set_epoch(1)  # no-op: already in epoch 1
    it = iter(run)
    for _ in range(2):
        next(it)
    torch.save(run.state_dict(), tmp_path / "loader.pt")
    state = torch.load(tmp_path / "loader.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"] == 2

    resumed = _loader(x, y, **kw)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a training loop does on resume: must keep the position
    rest = list(resumed)
    assert len(rest) == 4
    for (xa, ya), (xb, yb) in zip(reference[1][2:], rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(reference[2], list(resumed)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed.set_epoch(0)  # a different epoch restarts from its first batch
    assert torch.equal(next(iter(resumed))[0], reference[0][0][0])

    with pytest.raises(ValueError, match="world_size=1"):
        _loader(x, y, **kw, rank=0, world_size=2).load_state_dict(state)


@pytest.mark.parametrize("n, world_size", [(10, 3), (12, 4), (7, 2)])
def test_rank_shards_cover_the_data(n, world_size):
    x, y = _tiny(n=n)
    train_seen, eval_seen, lens = [], [], set()
    for rank in range(world_size):
        t = _loader(x, y, batch_size=2, train=True, rank=rank, world_size=world_size, drop_last=False, seed=3)
        t.set_epoch(5)
        labels = torch.cat([b[1] for b in t]).tolist()
        lens.add((len(t), len(labels)))
        train_seen += labels
        e = _loader(x, y, batch_size=2, train=False, rank=rank, world_size=world_size)
        eval_seen += torch.cat([b[1] for b in e]).tolist() if len(e) else []
    assert len(lens) == 1  # every rank takes the same number of steps
    per_rank = -(-n // world_size)
    assert len(train_seen) == per_rank * world_size and set(train_seen) == set(range(n))
    assert sorted(eval_seen) == list(range(n))  # evaluation: each sample exactly once


def test_channels_last_and_device_output():
    x, y = _tiny(n=8)
    a = next(iter(_loader(x, y, batch_size=8, train=True, channels_last=True)))[0]
    b = next(iter(_loader(x, y, batch_size=8, train=True)))[0]
    assert a.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)
    assert a.device.type == "cpu"


def test_loader_lengths_and_empty_split():
    x, y = _tiny(n=10)
    assert len(_loader(x, y, batch_size=4, train=True)) == 2
    assert len(_loader(x, y, batch_size=4, train=True, drop_last=False)) == 3
    assert len(_loader(x, y, batch_size=4, train=False, drop_last=True)) == 2
    empty = _loader(x[:0], y[:0], batch_size=4, train=False)
    assert len(empty) == 0 and list(empty) == []


@pytest.mark.parametrize("kw, message", [
    (dict(pad_mode="edge"), "pad_mode"),
    (dict(batch_size=0), "batch_size"),
    (dict(pad=8), "pad must be"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(mean=(0.5,)), "mean and std"),
    (dict(std=(0.5, 0.0, 0.5)), "std > 0"),
    (dict(seed=-1), "seed"),
    (dict(batch_size=5), "batch_size=5 exceeds the 4 samples"),
    (dict(batch_size=3, world_size=2, rank=1), "batch_size=3 exceeds the 2 samples of rank 1"),
])
def test_loader_rejects_bad_arguments(kw, message):
    x, y = _tiny(n=4)
    args = dict(batch_size=2, train=True) | kw
    with pytest.raises(ValueError, match=message):
        _loader(x, y, **args)
    with pytest.raises(ValueError, match="uint8"):
        _loader(x.float(), y, batch_size=2, train=True)
    with pytest.raises(ValueError, match="integer labels"):
        _loader(x, y[:3], batch_size=2, train=True)


def test_splits_loader_helper_uses_dataset_settings():
    d = load_dataset("digits")
    loader = d.loader("train", batch_size=32)
    assert repr(d) == "DataSplits('digits', train=1257, val=270, test=270, images 1x16x16, 10 classes)"
    assert loader.flip is False and loader.pad == 2 and loader.train
    xb, _ = next(iter(loader))
    assert xb.shape == (32, 1, 16, 16)
    assert not d.loader("test", batch_size=64).train
    with pytest.raises(ValueError, match="split"):
        d.loader("dev", batch_size=4)
