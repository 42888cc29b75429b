"""Classical low-light enhancers for the "enhance, then detect" baselines of the paper's table.

All take and return HxWx3 uint8 RGB:

* :func:`gamma_correct`: ``255 * (x / 255) ** (1 / gamma)``, rounded (a 256-entry table).
* :func:`clahe`: OpenCV's contrast-limited adaptive histogram equalisation on the L channel of
  CIE L*a*b*, colour left as is.
* :func:`lime`: LIME (Guo, Li, Ling, "LIME: Low-Light Image Enhancement via Illumination Map
  Estimation", TIP 2017), written here. The initial illumination is the maximum over R, G, B;
  it is refined with the paper's *sped-up solver* and its *structure-aware weights* (strategy
  III): one sparse linear system

      (I + alpha * sum_d D_d^T diag(W_d / (|D_d T0| + eps)) D_d) t = t0,
      W_d = 1 / (|G_sigma * D_d T0| + eps),   d in {horizontal, vertical},

  with forward differences D_d (no flux across the border) and a normalised Gaussian
  ``G_sigma``; then ``T = t ** gamma`` and the output is ``L / T`` per channel, clipped to
  [0, 1]. The optional BM3D denoising step of the paper is not done.
"""
from __future__ import annotations

import cv2
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

GAMMA = 2.2                  # out = in ** (1 / 2.2): the usual display gamma
CLAHE_CLIP = 2.0             # cv2 clipLimit
CLAHE_GRID = 8               # cv2 tileGridSize (8 x 8 tiles)
LIME_ALPHA = 0.15            # weight of the smoothness term
LIME_GAMMA = 0.8             # T <- T ** gamma (the paper's value)
LIME_SIGMA = 3.0             # std of the Gaussian of the structure-aware weights, px
LIME_EPS = 1e-3


def _check_rgb(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3):
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got "
                         f"{getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}")


def gamma_correct(rgb: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Brighten with ``y = x ** (1 / gamma)`` on [0, 1] (gamma > 1 brightens)."""
    _check_rgb(rgb)
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    table = np.round(255.0 * (np.arange(256) / 255.0) ** (1.0 / gamma)).astype(np.uint8)
    return table[rgb]


def clahe(rgb: np.ndarray, clip_limit: float = CLAHE_CLIP, grid: int = CLAHE_GRID) -> np.ndarray:
    """CLAHE on the L channel of cv2's 8-bit L*a*b*."""
    _check_rgb(rgb)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid))
    lab[..., 0] = op.apply(np.ascontiguousarray(lab[..., 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _forward_diff(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal [H, W-1] and vertical [H-1, W] forward differences."""
    return t[:, 1:] - t[:, :-1], t[1:, :] - t[:-1, :]


def lime_weights(t0: np.ndarray, sigma: float = LIME_SIGMA, eps: float = LIME_EPS
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-edge smoothness weights of the sped-up solver, strategy III: horizontal [H, W-1]
    and vertical [H-1, W]."""
    dx, dy = _forward_diff(t0)
    ksize = 2 * int(np.ceil(2.5 * sigma)) + 1
    out = []
    for d in (dx, dy):
        smooth = cv2.GaussianBlur(d, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT)
        w_struct = 1.0 / (np.abs(smooth) + eps)                  # W_d
        out.append(w_struct / (np.abs(d) + eps))                  # / (|D_d T0| + eps)
    return out[0], out[1]


def refine_illumination(t0: np.ndarray, alpha: float = LIME_ALPHA, sigma: float = LIME_SIGMA,
                        eps: float = LIME_EPS) -> np.ndarray:
    """Solve (I + alpha * sum_d D_d^T diag(w_d) D_d) t = t0 for the refined map [H, W]."""
    h, w = t0.shape
    wx, wy = lime_weights(t0.astype(np.float32), sigma, eps)
    wx = alpha * wx.astype(np.float64)
    wy = alpha * wy.astype(np.float64)
    n = h * w
    # edge weights towards the right / lower neighbour of each pixel (0 past the border)
    east = np.zeros((h, w))
    east[:, :-1] = wx
    south = np.zeros((h, w))
    south[:-1, :] = wy
    west = np.zeros((h, w))
    west[:, 1:] = wx
    north = np.zeros((h, w))
    north[1:, :] = wy
    diag = 1.0 + (east + west + south + north).ravel()
    a = sp.diags([diag, -east.ravel()[:-1], -east.ravel()[:-1],
                  -south.ravel()[:-w], -south.ravel()[:-w]],
                 [0, 1, -1, w, -w], shape=(n, n), format="csc")
    t = spla.spsolve(a, t0.astype(np.float64).ravel(), permc_spec="MMD_AT_PLUS_A")
    return t.reshape(h, w)


def lime(rgb: np.ndarray, alpha: float = LIME_ALPHA, gamma: float = LIME_GAMMA,
         sigma: float = LIME_SIGMA, eps: float = LIME_EPS) -> np.ndarray:
    """LIME enhancement (sped-up solver, structure-aware weights, no denoising)."""
    _check_rgb(rgb)
    x = rgb.astype(np.float64) / 255.0
    t0 = x.max(axis=2)                                        # T_hat = max_c L_c
    t = refine_illumination(t0, alpha, sigma, eps)
    t = np.clip(t, eps, 1.0) ** gamma
    y = np.clip(x / t[..., None], 0.0, 1.0)
    return np.round(y * 255.0).astype(np.uint8)


BASELINES = {"gamma": gamma_correct, "clahe": clahe, "lime": lime}
