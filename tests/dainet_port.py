"""A literal, slow port of DAI-Net's "Dark ISP" (``utils/DarkISP.py``, Low_Illumination_Degrading
with safe_invert=False), used only as a test oracle for data/camera.py's ``dainet`` preset.

The random draws are arguments (so that a test can feed it the draws of our sampler): the
XYZ -> camera matrix, gamma, rgb / red / blue gains, darkness, shot and read noise levels (read as
a variance, as the original uses it), a standard-normal tensor for the noise and three uniforms
in [0, 1) for its per-channel "quantisation noise".
"""
import torch

RGB2XYZ = [[0.4124564, 0.3575761, 0.1804375],
           [0.2126729, 0.7151522, 0.0721750],
           [0.0193339, 0.1191920, 0.9503041]]


def apply_ccm(image, ccm):
    shape = image.shape
    image = image.reshape(-1, 3)
    image = torch.tensordot(image, ccm, dims=[[-1], [-1]])
    return image.view(shape)


def dark_isp(img, xyz2cam, gamma, rgb_gain, red_gain, blue_gain, darkness, shot_noise,
             read_noise, normal, uniform3, bits):
    """``img`` [3, H, W] RGB in [0, 1] -> the original's dark image [3, H, W] (float64 maths)."""
    eps = torch.tensor([1e-8], dtype=torch.float64)
    img1 = img.permute(1, 2, 0).double()                                 # H, W, C
    img1 = 0.5 - torch.sin(torch.asin(1.0 - 2.0 * img1) / 3.0)          # inverse tone
    img2 = torch.max(img1, eps) ** gamma                                 # inverse gamma
    rgb2cam = torch.tensor(xyz2cam, dtype=torch.float64) @ torch.tensor(RGB2XYZ,
                                                                         dtype=torch.float64)
    rgb2cam = rgb2cam / rgb2cam.sum(-1, keepdim=True)
    img3 = apply_ccm(img2, rgb2cam)
    gains1 = torch.tensor([1.0 / red_gain, 1.0, 1.0 / blue_gain], dtype=torch.float64) * rgb_gain
    img4 = img3 * gains1                                                 # no safe inversion
    img5 = img4 * darkness
    var = torch.max(img5 * shot_noise + read_noise, eps)
    img6 = img5 + normal.permute(1, 2, 0).double() * torch.sqrt(var)
    # its quantisation noise: uniform(-1/(255*bits), 1/(255*bits)), one value per channel
    quan = (2.0 * uniform3.double() - 1.0) / (255 * bits)
    img7 = img6 + quan
    img8 = img7 * torch.tensor([red_gain, 1.0, blue_gain], dtype=torch.float64)
    img9 = apply_ccm(img8, torch.inverse(rgb2cam))
    img10 = torch.max(img9, eps) ** (1 / gamma)                          # no tone curve
    return img10.permute(2, 0, 1)
