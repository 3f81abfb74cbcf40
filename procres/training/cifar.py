"""CIFAR-10/100 from the official *python* archives the user already has: locate, read, validate.

What it reads:

* ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/{data_batch_1..5, test_batch,
  batches.meta}``; ``cifar-100-python.tar.gz`` holds ``cifar-100-python/{train, test, meta}``.
  ``path`` may be the ``.tar.gz`` itself, the extracted folder, one file of that folder, or a
  directory holding either.  Archive members are read in memory (never extracted to disk) and
  nothing is ever downloaded.
* Each batch is a pickled dict (protocol 2, bytes keys) with ``data``: uint8 ``N x 3072``, row
  major as 1024 red, 1024 green, 1024 blue values of a 32x32 image, and ``labels`` (CIFAR-10) or
  ``fine_labels`` + ``coarse_labels`` (CIFAR-100).  The pickles are unpickled with an allow-list
  that admits only what the official files need (dicts/lists/bytes and numpy array
  reconstruction); anything else, e.g. a pickle that would call ``os.system``, is refused before
  it can run.
* Every missing, truncated, malformed or refused input raises :class:`DatasetError` (a
  ``ValueError``, also for missing files, so callers catch one type) naming the path and the
  files expected there.

:func:`read_cifar` returns numpy arrays; ``procres.training.data`` splits them and wraps them for training.
"""

from __future__ import annotations

import io
import pickle
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from procres.errors import UserError
from procres.files import failure_reason

__all__ = ["DatasetError", "SPECS", "read_cifar", "synthetic_cifar"]


class DatasetError(UserError):
    """A data set file is missing, truncated, malformed or refused; the message names the path."""


@dataclass(frozen=True)
class _Spec:
    """One data set's archive name, folder name, files and label keys."""

    name: str
    archive: str
    folder: str
    train_files: tuple
    test_file: str
    meta_file: str
    label_key: str
    num_classes: int
    names_key: str

    @property
    def files(self):
        return self.train_files + (self.test_file, self.meta_file)

    def describe(self):
        return f"{self.archive} or a folder {self.folder}/ holding {', '.join(self.files)}"


SPECS = {
    "cifar10": _Spec("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                     tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                     "labels", 10, "label_names"),
    "cifar100": _Spec("cifar100", "cifar-100-python.tar.gz", "cifar-100-python",
                      ("train",), "test", "meta", "fine_labels", 100, "fine_label_names"),
}


class _Refused(pickle.UnpicklingError):
    pass


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1", "iso8859-1"):
        raise _Refused(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin-1 text "
                       "is allowed (nothing from the file was executed)")
    return text.encode("latin1")


@lru_cache(maxsize=1)
def _allowed_globals():
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):  # files pickled under numpy 1.x or 2.x
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, str/bytes, numbers and numpy arrays; refuses every other
    global (``os.system``, ``builtins.eval``, ...) before anything is called."""

    def find_class(self, module, name):
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise _Refused(f"refused to load global {module}.{name}: a CIFAR file holds only dicts, "
                           "lists, bytes and numpy arrays (nothing from the file was executed)")
        return obj

    def persistent_load(self, pid):
        raise _Refused("refused a persistent id: a CIFAR file has none (nothing was executed)")


def _unpickle(raw, where):
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except Exception as exc:  # any failure on untrusted bytes is a bad file, not a crash
        raise DatasetError(f"{where}: not a readable CIFAR pickle ({failure_reason(exc)})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _locate(spec, path):
    """("archive", file) or ("folder", dir) for the user's ``path``; DatasetError otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{spec.name}: {p} does not exist; expected {spec.describe()}")
    if p.is_file():
        if p.name in spec.files:  # one file of the extracted folder: use the folder
            return _locate(spec, p.parent)
        return "archive", p
    present = [f for f in spec.files if (p / f).is_file()]
    if len(present) == len(spec.files):
        return "folder", p
    if present or p.name == spec.folder:
        missing = [f for f in spec.files if f not in present]
        raise DatasetError(f"{spec.name}: folder {p} lacks {', '.join(missing)}; expected {spec.describe()}")
    if (p / spec.folder).is_dir():
        return _locate(spec, p / spec.folder)
    if (p / spec.archive).is_file():
        return "archive", p / spec.archive
    other = [s for s in SPECS.values() if s is not spec and ((p / s.archive).is_file() or (p / s.folder).is_dir())]
    hint = f" ({p} holds {other[0].name}: pass dataset={other[0].name!r} / --dataset {other[0].name})" if other else ""
    raise DatasetError(f"{spec.name}: found neither {spec.archive} nor {spec.folder}/ in {p}; "
                       f"expected {spec.describe()}{hint}")


def _read_files(spec, kind, p):
    """{file name: raw bytes} for every file of ``spec`` (archive members read in memory)."""
    if kind == "folder":
        return {f: (p / f).read_bytes() for f in spec.files}
    found, damaged = {}, False
    try:
        with tarfile.open(p, "r:*") as tar:
            for member in tar:  # one sequential pass: cheap on a gzip stream
                base = posixpath.basename(member.name)
                if member.isfile() and base in spec.files and base not in found:
                    found[base] = tar.extractfile(member).read()
            if len(found) < len(spec.files):
                # tarfile ends its iteration silently at a damaged header; a clean end is a zero block
                tar.fileobj.seek(tar.offset)
                damaged = tar.fileobj.read(512) != bytes(512)
            while tar.fileobj.read(1 << 20):  # to the end: gzip/bz2/xz verify their checksum there
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{spec.name}: {p} is not a readable tar archive, or is truncated "
                           f"({failure_reason(exc)}); expected {spec.describe()}") from None
    missing = [f for f in spec.files if f not in found]
    if damaged:
        raise DatasetError(f"{spec.name}: archive {p} is damaged or truncated: its tar stream breaks off at byte "
                           f"{tar.offset} before {', '.join(missing)}; expected {spec.describe()}")
    if missing:
        raise DatasetError(f"{spec.name}: archive {p} lacks {', '.join(missing)}; expected {spec.describe()}")
    return found


def _labels(batch, key, num_classes, n, where):
    if key not in batch:
        raise DatasetError(f"{where}: no {key!r} entry (keys: {sorted(map(str, batch))})")
    y = np.asarray(batch[key])
    if y.ndim != 1 or y.shape[0] != n or not (y.dtype.kind in "iu" or y.size == 0):
        raise DatasetError(f"{where}: {key!r} must be {n} integer labels, got shape {y.shape} dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{where}: {key!r} must lie in [0, {num_classes}), found [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _parse_batch(spec, raw, where):
    batch = _unpickle(raw, where)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (f"shape {data.shape} dtype {data.dtype}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DatasetError(f"{where}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    n = data.shape[0]
    y = _labels(batch, spec.label_key, spec.num_classes, n, where)
    coarse = _labels(batch, "coarse_labels", 20, n, where) if spec.name == "cifar100" else None
    return data.reshape(n, 3, 32, 32), y, coarse



def read_cifar(spec, path):
    """Read and validate every file of ``spec`` (an entry of :data:`SPECS`) at ``path``.

    Returns ``(train_x, train_y, train_coarse, test_x, test_y, test_coarse, classes)``: images
    uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)``, ``*_coarse`` CIFAR-100's superclass labels
    (None for CIFAR-10), ``classes`` the class names.  Raises :class:`DatasetError`.
    """
    kind, p = _locate(spec, path)
    raw = _read_files(spec, kind, p)
    where = lambda f: f"{spec.name}: {p}{'/' if kind == 'folder' else ':'}{f}"  # noqa: E731
    parts = [_parse_batch(spec, raw[f], where(f)) for f in spec.train_files]
    test_x, test_y, test_c = _parse_batch(spec, raw[spec.test_file], where(spec.test_file))
    meta = _unpickle(raw[spec.meta_file], where(spec.meta_file))
    names = meta.get(spec.names_key)
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DatasetError(f"{where(spec.meta_file)}: {spec.names_key!r} must list {spec.num_classes} names")
    classes = tuple(s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in names)
    x = np.concatenate([q[0] for q in parts])
    y = np.concatenate([q[1] for q in parts])
    c = np.concatenate([q[2] for q in parts]) if spec.name == "cifar100" else None
    return x, y, c, test_x, test_y, test_c, classes


# ---------------------------------------------------------------- writing the format (tests, --smoke)
def synthetic_cifar(folder, *, dataset: str = "cifar10", per_batch: int = 20, test: int = 40, seed: int = 0) -> Path:
    """Write a tiny archive in the official python format (tar.gz of protocol-2 pickles, bytes keys).

    CIFAR-10: ``cifar-10-python.tar.gz`` with ``cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta``; CIFAR-100: ``cifar-100-python.tar.gz`` with ``cifar-100-python/train, test,
    meta``. Images are class-dependent colour blobs plus noise, so a net can learn something.
    """
    rng = np.random.default_rng(seed)
    classes = {"cifar10": 10, "cifar100": 100}.get(dataset)
    if classes is None:
        raise UserError(f"dataset {dataset!r} is not cifar10 or cifar100")
    means = rng.integers(30, 225, size=(classes, 3))

    def batch(n, label_key, extra=None):
        y = rng.integers(0, classes, size=n)
        img = means[y][:, :, None, None] + rng.normal(0, 40, size=(n, 3, 32, 32))
        d = {b"batch_label": b"synthetic", b"data": np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072),
             label_key: [int(v) for v in y], b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        if extra:
            d[extra] = [int(v) % 20 for v in y]
        return pickle.dumps(d, protocol=2)

    if dataset == "cifar10":
        root, archive = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        files = {f"data_batch_{i}": batch(per_batch, b"labels") for i in range(1, 6)}
        files["test_batch"] = batch(test, b"labels")
        files["batches.meta"] = pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)],
                                              b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=2)
    else:
        root, archive = "cifar-100-python", "cifar-100-python.tar.gz"
        files = {"train": batch(5 * per_batch, b"fine_labels", b"coarse_labels"),
                 "test": batch(test, b"fine_labels", b"coarse_labels"),
                 "meta": pickle.dumps({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                       b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]},
                                      protocol=2)}
    path = Path(folder) / archive
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for fname, raw in files.items():
            info = tarfile.TarInfo(f"{root}/{fname}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path
