"""Pix2pix (Isola et al., CVPR 2017) for the noise synthesis D(H) (docs/LOW_LEVEL.md), written
here.

* :class:`UnetGenerator`: the U-Net-256 of the paper, 8 down levels (a 256x256 input reaches
  1x1), ``ngf`` = 64 filters at the top; encoder ``C64-C128-C256-C512-C512-C512-C512-C512``
  (4x4 convs, stride 2, LeakyReLU 0.2, batch norm except on the first and the innermost),
  decoder mirrored with transposed convs, ReLU, batch norm, dropout 0.5 in the three decoder
  levels next to the innermost one, skip connections by concatenation, tanh output in [-1, 1].
  Any input whose sides are multiples of 256 works (the noise pipeline pads to that).
* :class:`PatchDiscriminator`: the 70x70 PatchGAN, ``C64-C128-C256-C512`` (4x4 convs, strides
  2, 2, 2, 1, LeakyReLU 0.2, batch norm except on the first) then a 1-channel 4x4 conv (stride
  1): one real/fake logit per 70x70 patch. It sees the condition and the image concatenated.

The module tree is nested the way the widely used pix2pix implementation nests it
(``model.model.<i>...``; the discriminator ``model.<i>``), so a generator trained there (the
HLA-Face release) loads here by key; see :func:`generator_state_dict`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class UnetLevel(nn.Module):
    """One U-Net level around ``inner``: down (LeakyReLU, conv, BN), the inner levels, up
    (ReLU, transposed conv, BN[, dropout]); returns ``cat(input, up)`` except at the top."""

    def __init__(self, outer_nc: int, inner_nc: int, in_nc: int | None = None,
                 inner: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        in_nc = outer_nc if in_nc is None else in_nc
        down_conv = nn.Conv2d(in_nc, inner_nc, 4, 2, 1, bias=False)   # batch norm follows
        if outermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1), nn.Tanh()]
            layers = [down_conv, inner, *up]
        elif innermost:
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc, outer_nc, 4, 2, 1, bias=False),
                  nn.BatchNorm2d(outer_nc)]
            layers = [nn.LeakyReLU(0.2, True), down_conv, *up]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, nn.BatchNorm2d(inner_nc)]
            up = [nn.ReLU(True), nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, 2, 1, bias=False),
                  nn.BatchNorm2d(outer_nc)]
            layers = [*down, inner, *up] + ([nn.Dropout(0.5)] if dropout else [])
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)       # skip connection: [N, 2C, H, W]


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` levels; [N, in_nc, H, W] -> [N, out_nc, H, W] in [-1, 1]
    (H and W multiples of 2 ** num_downs)."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5, got {num_downs}")
        self.num_downs = num_downs
        level = UnetLevel(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):                   # the 512-channel middle levels
            level = UnetLevel(ngf * 8, ngf * 8, inner=level, dropout=dropout)
        level = UnetLevel(ngf * 4, ngf * 8, inner=level)
        level = UnetLevel(ngf * 2, ngf * 4, inner=level)
        level = UnetLevel(ngf, ngf * 2, inner=level)
        self.model = UnetLevel(out_nc, ngf, in_nc=in_nc, inner=level, outermost=True)

    def forward(self, x: Tensor) -> Tensor:
        m = 2 ** self.num_downs
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"U-Net input sides must be multiples of {m}, got "
                             f"{tuple(x.shape[-2:])} (pad first: lowlevel.noise)")
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN with ``n_layers`` stride-2 convs (3: 70x70 receptive field); raw logits."""

    def __init__(self, in_nc: int = 6, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def init_weights(net: nn.Module, std: float = 0.02) -> None:
    """pix2pix init: conv weights N(0, 0.02), biases 0, batch-norm weights N(1, 0.02)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def generator_state_dict(obj) -> dict:
    """The generator's state dict inside one of our checkpoints (``{"G": ...}``), a plain
    state dict, or a DataParallel save; batch-norm ``num_batches_tracked`` counters that old
    files lack are added (they are unused: momentum is fixed)."""
    if isinstance(obj, dict) and isinstance(obj.get("G"), dict):
        obj = obj["G"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    for key in [k for k in state if k.endswith(".running_mean")]:
        state.setdefault(key[: -len("running_mean")] + "num_batches_tracked",
                         torch.tensor(0, dtype=torch.long))
    return state


def generator_width(state: dict) -> int:
    """``ngf`` of a generator state dict (the out-channels of its first convolution)."""
    return int(state["model.model.0.weight"].shape[0])


def set_test_mode(net: nn.Module, reference: bool = True) -> nn.Module:
    """``reference``: as pix2pix's test script without ``--eval`` (what HLA-Face ran): batch norm
    normalises with the statistics of the image itself and dropout stays on. Otherwise
    ``eval()``: running statistics, no dropout."""
    if not reference:
        return net.eval()
    net.train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0                 # batch statistics, but leave the running ones as is
    return net
