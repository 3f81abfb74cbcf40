"""Dense reference operators for the spectral tests, built independently of procres, in float64:
a conv's matrix from the cross-correlation index formula, from its impulse responses (F.conv2d on
every basis image), and a Jacobian's singular values from autograd."""

import itertools

import numpy as np
import torch
import torch.nn.functional as F


def index_formula_matrix(weight, size, stride, mode):
    """Dense operator from y[o, i, j] = sum W[o, c, a, b] x[c, s i + a - k//2, s j + b - k//2]."""
    W = weight.double().numpy()
    co, ci, kh, kw = W.shape
    (h, w), s = size, stride
    ph, pw = kh // 2, kw // 2
    if mode == "circular":
        oh, ow = h // s, w // s
    else:
        oh, ow = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
    M = np.zeros((co, oh, ow, ci, h, w))
    for i, j, a, b in itertools.product(range(oh), range(ow), range(kh), range(kw)):
        r, c = s * i + a - ph, s * j + b - pw
        if mode == "circular":
            r, c = r % h, c % w
        elif not (0 <= r < h and 0 <= c < w):
            continue
        M[:, i, j, :, r, c] += W[:, :, a, b]
    return M.reshape(co * oh * ow, ci * h * w)


def impulse_operator(conv, size, mode):
    """Dense float64 operator (a tensor) of ``conv`` on inputs ``size``, from F.conv2d on every basis
    image (independent of procres.spectral.spectra.conv_matrix);
    "circular" wrap-pads k_eff // 2 rows/columns on top/left and the rest at the bottom/right;
    "reflect" and "replicate" pad as the conv's own padding says, with F.pad in that mode."""
    h, w = size
    eye = torch.eye(conv.in_channels * h * w, dtype=torch.float64).reshape(-1, conv.in_channels, h, w)
    kw = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    weight = conv.weight.detach().double()
    kh, kw_ = (d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation))
    if mode == "zeros":
        out = F.conv2d(eye, weight, padding=conv.padding, **kw)
    elif mode == "circular":
        padded = F.pad(eye, (kw_ // 2, kw_ - 1 - kw_ // 2, kh // 2, kh - 1 - kh // 2), mode="circular")
        out = F.conv2d(padded, weight, **kw)
    else:  # reflect / replicate: the conv's own padding, applied by F.pad in that mode
        if conv.padding == "same":  # PyTorch's: the extra row and column at the end
            (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in (kh - 1, kw_ - 1))
        else:
            (top, bottom), (left, right) = ((p, p) for p in conv.padding)
        out = F.conv2d(F.pad(eye, (left, right, top, bottom), mode=mode), weight, **kw)
    return out.reshape(eye.shape[0], -1).T


def dense_singular_values(fn, x):
    jac = torch.autograd.functional.jacobian(fn, x)
    out_numel = jac.numel() // x.numel()
    return torch.linalg.svdvals(jac.reshape(out_numel, x.numel()))
