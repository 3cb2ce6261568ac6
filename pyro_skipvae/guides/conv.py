"""Residual convolutional encoder for images (the image encoder of Kim et al. 2018 and
Dieng et al. 2019)."""

from torch import nn
from torch.nn import functional as F

from ..checks import check_count, per_layer
from ..errors import ConfigError
from .encoders import ENCODERS, Encoder


class ResidualBlock(nn.Module):
    r"""y = ReLU(P x + BN(conv(ReLU(BN(conv(x)))))) with 3×3 convolutions (He et al. 2016),
    P the identity or a 1×1 convolution where the channel count changes.

    :param int in_channels: channels of x.
    :param int channels: channels of y.
    """

    def __init__(self, in_channels, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.project = (
            nn.Identity() if in_channels == channels else nn.Conv2d(in_channels, channels, 1)
        )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(self.project(x) + y)


@ENCODERS.register("conv")
class ConvEncoder(Encoder):
    r"""h = flatten(D_B(R_B(… D_1(R_1(x))))); μ = A h + a, log σ² = B h + b.

    Each of the B stages is a :class:`ResidualBlock` R_b followed by a 2×2 convolution D_b
    of stride 2 that halves height and width (28 → 14 → 7 → 3 for MNIST with three blocks),
    as in the authors' image encoder (harvardnlp/sa-vae ``models_img.py``).

    The blocks use batch normalisation, so the encoder behaves differently in training and
    evaluation: evaluation (validation, diagnostics, encoding) must run in ``eval()`` mode
    (:func:`pyro_skipvae.modes.evaluating`), where the running statistics are used. Unlike the
    authors' code the Linear heads keep PyTorch's default initialisation (theirs: He normal).

    :param tuple data_shape: ``(C, H, W)``, with H and W at least 2^B.
    :param int latent_dim: size of z.
    :param channels: channels of every block, an int or one per block (default 32, sized
        for a CPU; the papers use 64).
    :param int num_blocks: B (default 3, or the length of a list given for ``channels``).
    """

    def __init__(self, data_shape, latent_dim, *, channels=32, num_blocks=None):
        super().__init__(data_shape, latent_dim)
        if len(self.data_shape) != 3:
            raise ConfigError(
                f"conv encoder: expected image data of shape (C, H, W), found {self.data_shape}"
            )
        if num_blocks is None:
            num_blocks = len(channels) if isinstance(channels, list | tuple) else 3
        widths = per_layer("channels", channels, check_count("num_blocks", num_blocks))
        c, height, width = self.data_shape
        if min(height, width) < 2**num_blocks:
            raise ConfigError(
                f"conv encoder: {num_blocks} stride-2 blocks need images of at least "
                f"{2**num_blocks}×{2**num_blocks} pixels, found {height}×{width}"
            )
        stages = []
        for in_channels, channels_b in zip((c, *widths[:-1]), widths):
            stages += [
                ResidualBlock(in_channels, channels_b),
                nn.Conv2d(channels_b, channels_b, 2, stride=2),
            ]
            height, width = height // 2, width // 2
        self.body = nn.Sequential(*stages)
        features = widths[-1] * height * width
        self.loc = nn.Linear(features, latent_dim)
        self.log_var = nn.Linear(features, latent_dim)

    def forward(self, x):
        h = self.body(x.to(self.loc.weight.dtype)).flatten(1)
        return self.loc(h), self.log_var(h)


__all__ = ["ConvEncoder", "ResidualBlock"]
