"""The illumination enhancer E(L) (docs/LOW_LEVEL.md) and how to apply it to uint8 images.

E(L) is HLA-Face's variant of Zero-DCE: seven 3x3 convolutions with *additive* skips predict 16
three-channel curve maps A_1..A_16 (tanh, in [-1, 1]), and the image is brightened by 16
quadratic light-enhancement curves ``y <- y + A_n * (y^2 - y)`` starting from ``y = x`` (RGB in
[0, 1]). The attribute names are the reference's, so ``Illumination-Enhancer.pth`` (14 tensors,
214,128 parameters: ``e_conv{1..7}.{weight,bias}``) loads strictly.

:func:`enhance_uint8` is what test.py and ``tools/enhance_images.py`` call: uint8 RGB in, uint8
RGB out, quantised exactly as torchvision's ``save_image`` does (x*255 + 0.5, clamp to [0, 255],
truncate). Large images can be processed in overlapping tiles; because every output pixel
depends only on the input pixels within :data:`RECEPTIVE_RADIUS` of it, tiles with a margin of
at least that radius reproduce the whole-image result.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

N_CURVES = 16                  # quadratic curve steps (Zero-DCE has 8; HLA-Face uses 16)
N_FEAT = 64
RECEPTIVE_RADIUS = 7           # seven stacked 3x3 convolutions, stride 1: 7 px each way
DEFAULT_MARGIN = 16            # tile overlap used by enhance_uint8 (> RECEPTIVE_RADIUS)


class EnhanceNet(nn.Module):
    """``enhance_net_nopool`` of the reference: returns ``(y, A)`` with ``y`` the enhanced image
    [N, 3, H, W] (not clamped) and ``A`` the 48-channel curve maps [N, 48, H, W]."""

    def __init__(self, n_feat: int = N_FEAT, n_curves: int = N_CURVES):
        super().__init__()
        self.n_curves = n_curves
        self.e_conv1 = nn.Conv2d(3, n_feat, 3, 1, 1)
        self.e_conv2 = nn.Conv2d(n_feat, n_feat, 3, 1, 1)
        self.e_conv3 = nn.Conv2d(n_feat, n_feat, 3, 1, 1)
        self.e_conv4 = nn.Conv2d(n_feat, n_feat, 3, 1, 1)
        self.e_conv5 = nn.Conv2d(n_feat, n_feat, 3, 1, 1)
        self.e_conv6 = nn.Conv2d(n_feat, n_feat, 3, 1, 1)
        self.e_conv7 = nn.Conv2d(n_feat, 3 * n_curves, 3, 1, 1)

    def curve_maps(self, x: Tensor) -> Tensor:
        """[N, 3, H, W] in [0, 1] -> A [N, 3 * n_curves, H, W] in [-1, 1]."""
        x1 = F.relu(self.e_conv1(x))
        x2 = F.relu(self.e_conv2(x1))
        x3 = F.relu(self.e_conv3(x2))
        x4 = F.relu(self.e_conv4(x3))
        x5 = F.relu(self.e_conv5(x3 + x4))           # additive skips (Zero-DCE concatenates)
        del x3, x4                                   # frees memory at full resolution
        x6 = F.relu(self.e_conv6(x2 + x5))
        return torch.tanh(self.e_conv7(x1 + x6))

    @staticmethod
    def apply_curves(x: Tensor, maps: Tensor) -> Tensor:
        """LE(y) = y + A_n (y^2 - y), n = 1..16, per pixel and channel."""
        y = x
        for a in torch.split(maps, 3, dim=1):
            y = y + a * (y * y - y)
        return y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.curve_maps(x)
        return self.apply_curves(x, maps), maps


def init_weights(net: nn.Module) -> None:
    """The reference's init: conv weights N(0, 0.02); biases keep PyTorch's default."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)


def enhancer_state_dict(obj) -> dict:
    """The plain 14-tensor state dict inside a reference file, one of our training
    checkpoints (``{"model": ...}``) or a DataParallel save (``module.`` prefix)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_enhancer(path: str | Path, device: torch.device | str = "cpu",
                  key: str = "ENHANCE.WEIGHTS") -> EnhanceNet:
    """EnhanceNet with weights from ``path`` (strict), in eval mode on ``device``."""
    from utils.checkpoint import load_file     # local: importing this module stays light
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"enhancer weights {path} do not exist (set by {key})")
    net = EnhanceNet()
    net.load_state_dict(enhancer_state_dict(load_file(path, "enhancer weights")), strict=True)
    return net.eval().to(device)


# ---------------------------------------------------------------------------------------------
# uint8 in, uint8 out


def to_unit(rgb: Tensor) -> Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float32 in [0, 1] (bit-identical to the reference's
    float64 ``/ 255.0`` followed by ``.float()``)."""
    return rgb.permute(0, 3, 1, 2).float().div_(255.0)


def quantize(y: Tensor) -> Tensor:
    """[N, 3, H, W] float -> [N, H, W, 3] uint8 as torchvision ``save_image``: ``mul(255)``,
    ``add(0.5)``, ``clamp(0, 255)``, then a truncating cast."""
    return y.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def tile_windows(height: int, width: int, tile: int, margin: int
                 ) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Yield ``(in_rows, in_cols, core_rows, core_cols)``: the input window to process (the core
    tile grown by ``margin`` and clipped to the image) and where its core lies inside it."""
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        a0, a1 = max(y0 - margin, 0), min(y1 + margin, height)
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            b0, b1 = max(x0 - margin, 0), min(x1 + margin, width)
            yield (slice(a0, a1), slice(b0, b1), slice(y0 - a0, y1 - a0),
                   slice(x0 - b0, x1 - b0))


def _enhance_tiled(net: nn.Module, x: Tensor, tile: int, margin: int) -> Tensor:
    """Enhance [N, 3, H, W] tile by tile; equal to ``net(x)[0]`` when margin >= 7."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for rows, cols, core_r, core_c in tile_windows(h, w, tile, margin):
        y, _ = net(x[:, :, rows, cols])
        out[:, :, rows, cols][:, :, core_r, core_c] = y[:, :, core_r, core_c]
    return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "memory" in str(exc).lower())


@torch.no_grad()
def enhance_uint8(net: nn.Module, rgb, device: torch.device | str | None = None,
                  tile: int = 0, margin: int = DEFAULT_MARGIN, auto_tile: bool = True):
    """Brighten uint8 RGB image(s) with E(L); same shape and type (numpy or tensor) out.

    ``rgb``: [H, W, 3] or [N, H, W, 3] uint8 (numpy array or tensor; a batch shares one size).
    ``device``: where to run (default: the network's device); the whole batch goes in one
    forward pass. ``tile`` > 0 processes square tiles of that side with ``margin`` pixels of
    context (must exceed :data:`RECEPTIVE_RADIUS` to be exact). With ``auto_tile`` an
    out-of-memory error falls back to tiles of 1024, then 512, 256 px.
    """
    if margin < RECEPTIVE_RADIUS:
        raise ValueError(f"tile margin {margin} must be at least the receptive-field radius "
                         f"{RECEPTIVE_RADIUS} for tiles to match the whole-image result")
    as_numpy = isinstance(rgb, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(rgb)) if as_numpy else rgb
    if t.dtype != torch.uint8 or t.shape[-1] != 3 or t.dim() not in (3, 4):
        raise ValueError(f"expected uint8 RGB [H, W, 3] or [N, H, W, 3], got {t.dtype} "
                         f"{tuple(t.shape)}")
    single = t.dim() == 3
    if single:
        t = t[None]
    if device is None:
        device = next(net.parameters()).device
    x = to_unit(t.to(device, non_blocking=True))
    tiles = [tile] if tile > 0 else [0]
    if auto_tile:
        tiles += [s for s in (1024, 512, 256) if s < (tile or 10 ** 9)]
    for i, size in enumerate(tiles):
        try:
            y = net(x)[0] if size == 0 else _enhance_tiled(net, x, size, margin)
            break
        except Exception as exc:              # noqa: BLE001 - only out-of-memory is retried
            if not _is_oom(exc) or i == len(tiles) - 1:
                raise
            log.warning("out of memory enhancing a %s batch%s; retrying with %d px tiles",
                        tuple(x.shape), f" in {size} px tiles" if size else "", tiles[i + 1])
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    out = quantize(y).cpu()
    if single:
        out = out[0]
    return out.numpy() if as_numpy else out
