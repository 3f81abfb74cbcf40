"""Data: CIFAR-10/100 from the user's local files, the bundled digits set, device-resident batches.

Spec (recipe in docs/theory.md section 6):

* ``load_dataset("cifar10" | "cifar100", path)`` reads the official *python* archives
  (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), their extracted folders or a
  directory holding either, through :mod:`procres.training.cifar` (format, allow-list unpickler and
  validation are described there).  Nothing is ever downloaded.  Every missing, truncated,
  malformed or refused input raises :class:`DatasetError` (a ``ValueError``) naming the path and
  the files expected there.
* Validation split: ``val_size`` training images (default 5,000 for CIFAR, as He et al. 2016's
  45k/5k) are held out by a permutation seeded with ``seed``; ``val_size=0`` trains on all
  50,000 (the paper's protocol).
* ``load_dataset("digits")``: scikit-learn's bundled handwritten digits (1,797 real 8x8 images,
  values 0..16, no network), scaled to 0..255, upsampled to 16x16 bilinearly (half-pixel centres,
  like ``F.interpolate(..., align_corners=False)``), 1 channel, 10 classes.
  ``image_size=8`` keeps the native 8x8 pixels (the upsampling adds no information; a net's
  step costs about half as much), with its own ``DIGITS8_MEAN``/``DIGITS8_STD``.  A fixed test set of
  270 images (permutation seeded with ``DIGITS_SPLIT_SEED``, independent of ``seed``); from the
  remaining 1,527 the validation split (default 270, seeded with ``seed``) is held out, leaving
  1,257 for training.  ``DIGITS_MEAN``/``DIGITS_STD`` are computed over those 1,527 non-test images
  (as the CIFAR constants are over all 50k training images).  No flips (digits are not mirror
  symmetric); recommended crop padding 2 (1 at 8x8).
* Normalisation constants: CIFAR mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255 (the
  authors' code and the paper use them for CIFAR-100 as well, so ``CIFAR100_*`` alias them).
* :class:`DeviceLoader` keeps uint8 images on the device and builds each batch there: seeded
  shuffle, random crop after padding (reflect or zeros), horizontal flip, normalisation — batched
  tensor ops, no per-sample Python work, no DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from procres.errors import UserError
from procres.training.cifar import SPECS as _SPECS
from procres.training.cifar import DatasetError, read_cifar

__all__ = ["load_dataset", "DataSplits", "DatasetError", "DeviceLoader", "augment_batch", "CIFAR10_MEAN",
           "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "DIGITS_MEAN", "DIGITS_STD", "DIGITS8_MEAN",
           "DIGITS8_STD", "make_batches"]

CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = CIFAR10_MEAN
CIFAR100_STD = CIFAR10_STD

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_SIZE = 270
DIGITS_VAL_SIZE = 270
# Mean/std of the 1,527 non-test digits images after the 16x16 upsampling, in [0, 1] units
# (test_data.py recomputes them from the data).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3186,)
# the same over the native 8x8 images (image_size=8)
DIGITS8_MEAN = (0.3053,)
DIGITS8_STD = (0.3758,)
DIGITS_SIZES = (8, 16)

CIFAR_VAL_SIZE = 5000


@dataclass
class DataSplits:
    """Train/validation/test tensors of one data set, plus what a model and loader need.

    Images are uint8 ``(N, C, H, W)`` CPU tensors, labels int64 ``(N,)``; ``val_x``/``val_y``
    are empty when ``val_size=0``.  ``mean``/``std`` are per-channel tuples in [0, 1] units.
    ``flip``: horizontal flips are a valid augmentation; ``pad``: recommended crop padding.
    ``classes``: class names; ``*_coarse_y``: CIFAR-100's 20 superclass labels (else None).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    flip: bool
    pad: int = 4
    classes: tuple = ()
    train_coarse_y: torch.Tensor | None = None
    val_coarse_y: torch.Tensor | None = None
    test_coarse_y: torch.Tensor | None = None

    def __repr__(self):
        c, h = self.in_channels, self.image_size
        return (f"DataSplits({self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
                f"test={len(self.test_y)}, images {c}x{h}x{h}, {self.num_classes} classes)")

    def loader(self, split, *, batch_size, train=None, **kwargs):
        """A :class:`DeviceLoader` over ``split`` ("train" | "val" | "test") with this data set's
        mean, std, flip and pad filled in; ``train`` defaults to ``split == "train"``."""
        if split not in ("train", "val", "test"):
            raise UserError(f"split must be 'train', 'val' or 'test', got {split!r}")
        kwargs.setdefault("flip", self.flip)
        kwargs.setdefault("pad", self.pad)
        return DeviceLoader(getattr(self, f"{split}_x"), getattr(self, f"{split}_y"),
                            batch_size=batch_size, train=(split == "train") if train is None else train,
                            mean=self.mean, std=self.std, **kwargs)


def load_dataset(name, path=None, *, val_size=None, seed=0, image_size=None):
    """Load ``name`` in {"cifar10", "cifar100", "digits"} into a :class:`DataSplits`.

    ``path``: the official ``.tar.gz``, its extracted folder or a directory holding either
    (required for CIFAR, must be None for digits).  ``val_size``: images held out of the
    training set for validation (None: 5,000 for CIFAR, 270 for digits; 0: no validation split),
    chosen by a permutation seeded with ``seed``.  ``image_size``: None for the data set's own
    (CIFAR 32, digits 16); digits also takes 8 (native pixels), CIFAR only 32.
    """
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in _SPECS and key != "digits":
        raise UserError(f"unknown dataset {name!r}; choose one of 'cifar10', 'cifar100', 'digits'")
    if val_size is not None and (isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0):
        raise UserError(f"val_size must be None or an int >= 0, got {val_size!r}")
    sizes = DIGITS_SIZES if key == "digits" else (32,)
    if image_size is not None and image_size not in sizes:
        raise UserError(f"image_size {image_size!r} is not available for {key}; choose one of {sizes}")
    if key == "digits":
        if path is not None:
            raise UserError(f"the digits set is bundled with scikit-learn and takes no path, got {path!r}")
        return _load_digits(DIGITS_VAL_SIZE if val_size is None else val_size, seed, image_size or 16)
    if path is None:
        spec = _SPECS[key]
        raise DatasetError(f"{key} needs path= pointing at {spec.archive} or its extracted folder "
                           f"{spec.folder}/ (nothing is downloaded)")
    return _load_cifar(_SPECS[key], path, CIFAR_VAL_SIZE if val_size is None else val_size, seed)


# ---------------------------------------------------------------------------------------------
# CIFAR (files read by procres.training.cifar)

def _load_cifar(spec, path, val_size, seed):
    x, y, c, test_x, test_y, test_c, classes = read_cifar(spec, path)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    c = None if c is None else torch.from_numpy(c)
    tr, va = _split(len(x), val_size, seed, spec.name)
    return DataSplits(
        name=spec.name, train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
        test_x=torch.from_numpy(test_x.copy()), test_y=torch.from_numpy(test_y),  # copy: may be read-only
        num_classes=spec.num_classes, in_channels=3, image_size=32,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, flip=True, pad=4, classes=classes,
        train_coarse_y=None if c is None else c[tr], val_coarse_y=None if c is None else c[va],
        test_coarse_y=None if test_c is None else torch.from_numpy(test_c))


def _split(n, val_size, seed, name):
    """Sorted (train, val) index tensors: ``val_size`` of ``n`` held out by a seeded permutation."""
    if val_size >= n:
        raise UserError(f"val_size={val_size} leaves no training images: {name} has {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


# ---------------------------------------------------------------------------------------------
# digits

@lru_cache(maxsize=len(DIGITS_SIZES))
def _digits_arrays(size=16):
    """(images uint8 (1797, 1, size, size), labels int64) from scikit-learn's bundled copy."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x, torch.from_numpy(bunch.target.astype(np.int64))


def _load_digits(val_size, seed, size):
    x, y = _digits_arrays(size)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    test, pool = perm[:DIGITS_TEST_SIZE].sort().values, perm[DIGITS_TEST_SIZE:].sort().values
    tr, va = _split(len(pool), val_size, seed, "digits")
    tr, va = pool[tr], pool[va]
    return DataSplits(
        name="digits", train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
        test_x=x[test], test_y=y[test], num_classes=10, in_channels=1, image_size=size,
        mean=DIGITS8_MEAN if size == 8 else DIGITS_MEAN, std=DIGITS8_STD if size == 8 else DIGITS_STD,
        flip=False, pad=size // 8,
        classes=tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------------------------------------
# batches on the device

def _mix_seed(*parts):
    # Well-mixed 63-bit seed: seed+epoch would make (seed 1, epoch 0) replay (seed 0, epoch 1).
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def augment_batch(x, offsets, flips, *, pad, pad_mode="reflect"):
    """Random crop after padding plus horizontal flip, for a whole batch in one gather.

    x: (B, C, H, W) any dtype; offsets: (B, 2) int64 crop corner (row, col) in the padded
    image, each in [0, 2*pad]; flips: (B,) bool, True mirrors that sample left-right.
    Returns (B, C, H, W): ``out[b] = flip_b(pad(x[b])[:, r:r+H, c:c+W])``.  ``pad_mode``
    "reflect" mirrors without repeating the edge (like ``F.pad(mode="reflect")``), "zeros"
    pads with 0 (black before normalisation, as torchvision's RandomCrop(padding=4)).
    """
    B, C, H, W = x.shape
    ar_h = torch.arange(H, device=x.device)
    ar_w = torch.arange(W, device=x.device)
    r = offsets[:, 0, None] + ar_h  # (B, H) rows of the padded image
    c = offsets[:, 1, None] + torch.where(flips[:, None], ar_w.flip(0), ar_w)  # (B, W) columns
    if pad_mode == "reflect":  # map padded coordinates back into the image: no padded copy
        r = _reflect_index(H, pad, x.device)[r]
        c = _reflect_index(W, pad, x.device)[c]
    elif pad > 0:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    # two gathers (rows, then columns) beat one 4-index advanced-indexing gather ~2x on CPU
    x = x.gather(2, r[:, None, :, None].expand(B, C, H, x.shape[3]))
    return x.gather(3, c[:, None, None, :].expand(B, C, H, W))


def _reflect_index(n, pad, device):
    i = torch.arange(-pad, n + pad, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


class DeviceLoader:
    """Batches of (normalised float images, int64 labels) built on ``device`` from uint8 data.

    x: uint8 (N, C, H, W); y: integer (N,); both are moved to ``device`` once.  ``batch_size`` is
    the *per-rank* batch (global batch = batch_size * world_size).

    ``train=True``: each epoch a permutation seeded by (seed, epoch) — identical on every rank — is
    padded to a multiple of ``world_size`` by repeating its head (DistributedSampler semantics) and
    rank r takes positions r, r + world_size, ...; every sample gets a random crop after ``pad``
    pixels of ``pad_mode`` ("reflect" | "zeros") padding and, if ``flip``, a random horizontal flip.
    Crop offsets and flips for the whole epoch are drawn up front from a CPU generator seeded by
    (seed, epoch, rank), so batches need no host sync and are identical on CPU and CUDA.
    ``drop_last`` defaults to ``train`` (every step the same size, so every rank the same steps).
    ``train=False``: no shuffle, no augmentation, no padding of the index list (each sample on
    exactly one rank; ranks may differ by one batch, so reduce sums, not per-batch), no drop;
    every iteration is a full pass.  Output: ``(x/255 - mean)/std`` as float32 (channels_last
    memory format if ``channels_last``), labels int64.

    Training iteration is resumable: ``state_dict()`` -> {epoch, position (batches handed out this
    epoch), ...}; after ``load_state_dict`` the next iteration continues with exactly the batches
    an uninterrupted loader would have produced.  A finished pass moves on to the next epoch by
    itself; ``set_epoch(e)`` restarts epoch ``e`` unless the loader is already in epoch ``e`` (so a
    resumed mid-epoch position survives the usual ``set_epoch`` call).  One iterator at a time.
    """

    def __init__(self, x, y, *, batch_size, train, mean, std, device="cpu", pad=4, pad_mode="reflect",
                 flip=True, seed=0, rank=0, world_size=1, drop_last=None, channels_last=False):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
            raise UserError(f"x must be a uint8 tensor (N, C, H, W), got {getattr(x, 'dtype', type(x))} "
                             f"of shape {tuple(getattr(x, 'shape', ()))}")
        y = torch.as_tensor(y)
        if y.ndim != 1 or len(y) != len(x) or y.is_floating_point():
            raise UserError(f"y must hold {len(x)} integer labels, got {y.dtype} of shape {tuple(y.shape)}")
        C, H, W = x.shape[1:]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive int, got {batch_size!r}")
        if pad_mode not in ("reflect", "zeros"):
            raise UserError(f"pad_mode must be 'reflect' or 'zeros', got {pad_mode!r}")
        if not isinstance(pad, int) or pad < 0 or (pad_mode == "reflect" and pad >= min(H, W)):
            raise UserError(f"pad must be an int in [0, {min(H, W)}) for {H}x{W} images, got {pad!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise UserError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed must be an int >= 0, got {seed!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != C or len(std) != C or min(std) <= 0:
            raise UserError(f"mean and std need {C} entries (std > 0), got mean={mean}, std={std}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size, self.train, self.pad, self.pad_mode = batch_size, bool(train), pad, pad_mode
        self.flip, self.seed, self.rank, self.world_size = bool(flip), int(seed), rank, world_size
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.channels_last = bool(channels_last)
        if self.drop_last and 0 < self._samples() < batch_size:  # an epoch would silently be empty
            raise UserError(f"batch_size={batch_size} exceeds the {self._samples()} samples of rank {rank} "
                             "and drop_last would leave no batch; lower batch_size or pass drop_last=False")
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, C, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, C, 1, 1)
        self._scale, self._shift = 1.0 / (255.0 * std_t), -mean_t / std_t  # (x/255 - mean)/std
        self.epoch, self.position = 0, 0

    def _indices(self, epoch):
        """This rank's sample indices for ``epoch`` (CPU int64)."""
        n = len(self.x)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix_seed(self.seed, epoch)))
        total = -(-n // self.world_size) * self.world_size
        if total > n:  # repeat the head so every rank gets the same number of samples
            order = torch.cat([order, order.repeat(-(-total // n))[: total - n]])
        return order[self.rank::self.world_size]

    def _samples(self):
        n = len(self.x)
        if not self.train:
            return len(range(self.rank, n, self.world_size))
        return -(-n // self.world_size)

    def __len__(self):
        m = self._samples()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def set_epoch(self, epoch):
        """Start epoch ``epoch`` from its first batch (no-op if already in that epoch)."""
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def _plan(self, epoch):
        """This rank's (indices, crop offsets (m, 2), flips (m,)) for ``epoch``, drawn at once on the
        CPU so that batches need no host-device synchronisation and match across devices."""
        gen = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, self.rank))
        m = self._samples()
        offsets = torch.randint(0, 2 * self.pad + 1, (m, 2), generator=gen)
        flips = torch.rand(m, generator=gen) < 0.5 if self.flip else torch.zeros(m, dtype=torch.bool)
        return self._indices(epoch), offsets, flips

    def __iter__(self):
        B = self.batch_size
        if not self.train:
            idx = self._indices(0).to(self.device)
            for i in range(len(self)):
                j = idx[i * B:(i + 1) * B]
                yield self._normalise(self.x.index_select(0, j)), self.y.index_select(0, j)
            return
        epoch = self.epoch
        idx, offsets, flips = (t.to(self.device) for t in self._plan(epoch))
        for i in range(self.position, len(self)):
            s = slice(i * B, (i + 1) * B)
            xb = self.x.index_select(0, idx[s])
            if self.pad > 0 or self.flip:
                xb = augment_batch(xb, offsets[s], flips[s], pad=self.pad, pad_mode=self.pad_mode)
            self.position = i + 1
            yield self._normalise(xb), self.y.index_select(0, idx[s])
        self.epoch, self.position = epoch + 1, 0

    def _normalise(self, xb):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return xb.to(torch.float32, memory_format=fmt).mul_(self._scale).add_(self._shift)

    def state_dict(self):
        """Where a training loader stands: {epoch, position (batches handed out this epoch)} plus
        the settings it must be restored into.  The shuffle and augmentation generators are
        re-seeded from (seed, epoch[, rank]) every epoch, so (epoch, position) fixes the rest."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size, "num_samples": len(self.x)}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`; refuses a state from a different data/sharding setup."""
        for key in ("seed", "rank", "world_size", "batch_size", "num_samples"):
            mine = len(self.x) if key == "num_samples" else getattr(self, key)
            if key in state and int(state[key]) != mine:
                raise UserError(f"loader state has {key}={state[key]}, this loader has {mine}")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise UserError(f"loader state position={position} outside [0, {len(self)}]")
        self.epoch, self.position = int(state["epoch"]), position


def make_batches(data: str, *, input_shape, batch: int, count: int, seed: int = 0,
                 vocab: int | None = None) -> tuple[list, tuple]:
    """``count`` batches of ``batch`` examples from ``data`` -> (list of (x, y or None), input shape),
    for ``procres inspect --data`` and ``procres study``: ``random`` (standard normal inputs of
    ``input_shape``, no labels; with ``vocab``, token ids uniform in ``[0, vocab)`` of
    ``input_shape = (LEN,)``), ``digits`` (the embedded 1x16x16 set) or ``cifar10:PATH`` /
    ``cifar100:PATH`` (the local archive), normalised with the data set's mean and std."""
    gen = torch.Generator().manual_seed(seed)
    if data == "random":
        shape = tuple(input_shape)
        if vocab is not None:
            if len(shape) != 1 or shape[0] < 2:
                raise UserError(f"token batches need a length of at least 2 (one next token to predict), "
                                f"got shape {shape}")
            return [(torch.randint(vocab, (batch, *shape), generator=gen), None) for _ in range(count)], shape
        return [(torch.randn(batch, *shape, generator=gen), None) for _ in range(count)], shape
    if vocab is not None:
        raise UserError(f"token ids are random: --data {data!r} holds images; drop one of them")
    name, _, path = data.partition(":")
    if name not in ("digits", "cifar10", "cifar100"):
        raise UserError(f"--data must be 'random', 'digits', 'cifar10:PATH' or 'cifar100:PATH', got {data!r}")
    splits = load_dataset(name, path or None, seed=seed)
    mean = torch.tensor(splits.mean).view(1, -1, 1, 1)
    std = torch.tensor(splits.std).view(1, -1, 1, 1)
    batches = []
    for _ in range(count):
        idx = torch.randint(len(splits.train_y), (batch,), generator=gen)
        x = (splits.train_x[idx].float() / 255 - mean) / std
        batches.append((x, splits.train_y[idx].long()))
    return batches, tuple(batches[0][0].shape[1:])
