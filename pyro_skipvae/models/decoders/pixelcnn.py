r"""Gated PixelCNN decoder conditioned on z, with or without generative skip connections.

The network is the gated PixelCNN of van den Oord et al. (2016, "Conditional Image
Generation with PixelCNN Decoders", §2.2–2.3) as used by the image models of Kim et al.
(2018, SA-VAE) and Dieng et al. (2019, Skip-VAE, §3): a *vertical* stack that sees the rows
above a pixel and a *horizontal* stack that sees the pixels to its left in the same row, so
that the parameters at pixel i depend on x_<i (raster order) only and the receptive field
has no blind spot. z enters a layer as ``z_maps`` extra input feature maps
``reshape(A_l z + a_l)`` of the image's size, one Linear map per layer.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ...checks import check_count, per_layer
from ...errors import ConfigError
from .base import Decoder

#: layers when neither ``channels`` nor ``kernel_sizes`` is a list and ``num_layers`` is unset
DEFAULT_NUM_LAYERS = 4
#: default kernel sizes: a wide first layer (it reads one image channel and the z maps, so it
#: is cheap), 3 after it, as in PixelCNN (van den Oord et al. 2016a, table 1)
DEFAULT_FIRST_KERNEL, DEFAULT_KERNEL = 7, 3


def _gate(pre):
    """tanh(a) ⊙ σ(b) of the two halves of the channels."""
    a, b = pre.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    r"""One gated layer with a vertical and a horizontal stack (van den Oord et al. 2016,
    fig. 2).

    With ``*`` a convolution, kernel size k and p = ⌊k/2⌋:

    .. math::

        v^{pre} &= W_v * [v_{l-1}, m_l] \quad \text{(rows } r-p … r\text{, columns } c-p … c+k-1-p) \\
        v_l &= \tanh(v^{pre}_a) \odot \sigma(v^{pre}_b) \\
        h^{pre} &= W_h * [h_{l-1}, m_l] + W_{vh} v^{pre} \quad \text{(row } r\text{, columns } c-p … c) \\
        h_l &= h_{l-1} + W_o\,(\tanh(h^{pre}_a) \odot \sigma(h^{pre}_b))

    where m_l are the z feature maps (absent when z does not enter this layer). The first
    layer ("mask A") shifts both convolutions by one (rows r-p-1 … r-1, columns c-p-1 … c-1)
    and has no residual term; later layers ("mask B") may include row r of v_{l-1} and
    column c of h_{l-1}, which already depend on strictly earlier pixels only. So v_l at row
    r depends on the rows above r and h_l at (r, c) on the rows above and the pixels left of c.

    :param int in_channels: channels of v_{l-1} and h_{l-1} (without the z maps).
    :param int channels: channels of v_l and h_l.
    :param int kernel_size: k.
    :param bool first: mask A (first layer) rather than mask B.
    :param int z_maps: number of z feature maps concatenated to this layer's inputs (0: none).
    """

    def __init__(self, in_channels, channels, kernel_size, *, first, z_maps):
        super().__init__()
        self.kernel_size = kernel_size
        self.first = first
        half = kernel_size // 2
        inputs = in_channels + z_maps
        self.vertical = nn.Conv2d(inputs, 2 * channels, (half + 1, kernel_size))
        self.horizontal = nn.Conv2d(inputs, 2 * channels, (1, half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        if first:
            self.residual = None
        elif in_channels == channels:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Conv2d(in_channels, channels, 1)

    def forward(self, v, h, z_maps=None):
        if z_maps is not None:
            v_in, h_in = torch.cat([v, z_maps], 1), torch.cat([h, z_maps], 1)
        else:
            v_in, h_in = v, h
        k, half = self.kernel_size, self.kernel_size // 2
        shift = 1 if self.first else 0
        # Zero padding above (and left) and cropping below (and right) by `shift` places each
        # output on the pixels it may see; F.pad crops where the padding is negative.
        v_pre = self.vertical(F.pad(v_in, (half, k - 1 - half, half + shift, -shift)))
        h_pre = self.horizontal(F.pad(h_in, (half + shift, -shift, 0, 0)))
        h_pre = h_pre + self.vertical_to_horizontal(v_pre)
        h_out = self.out(_gate(h_pre))
        if self.residual is not None:
            h_out = h_out + self.residual(h)
        return _gate(v_pre), h_out


class PixelCNNDecoder(Decoder):
    r"""Gated PixelCNN p(x | z) = ∏_i p(x_i | x_<i, z) over pixels in raster order.

    Layer l (of L) reads the previous layer's vertical and horizontal stacks (the image x for
    l = 1) concatenated with z feature maps m_l = reshape(A_l z + a_l) of shape
    ``(z_maps, H, W)`` (:class:`GatedLayer`); the likelihood parameters at every pixel are a
    1×1 convolution of the last horizontal stack:

    .. math::

        \eta = W_{out} * [h_L, m_{L+1}] .

    * ``skip=False`` (the standard VAE): z enters the first layer only (m_1); m_l for l > 1
      and m_{L+1} are absent.
    * ``skip=True`` (generative skip model, Dieng et al. 2019): every layer and the output
      convolution get their own m_l.

    The defaults (4 layers of 8 channels, kernels 7, 3, 3, 3, one z map; receptive field 7
    rows above and ±6 columns) are sized for a CPU: on one free core an epoch of binarised
    MNIST takes 6–7 minutes (validation ELBO ≈ −92 nats after the first) and K = 500
    importance samples on the 10,000 test images about 2 hours; the papers' size is ~7× that
    per image (``benchmarks/results/pixelcnn_timing.md``). The authors' settings, for a GPU:

    * Skip-VAE MNIST: ``num_layers=8, channels=32, kernel_sizes=3, z_maps=1``, latent 20;
    * SA-VAE Omniglot: ``channels=32, kernel_sizes=[9,9,9,7,7,7,5,5,5,3,3,3], z_maps=4``,
      latent 32.

    Differences from the authors' code (harvardnlp/sa-vae and yoonkim/skip-vae
    ``models_img*.py``), each deliberate:

    * Their vertical stack shifts down by one row in *every* layer, so layer l sees only
      rows ≤ r − l (the row just above reaches the horizontal stack only through layer 1);
      here only the first layer shifts, the standard gated PixelCNN (same causality, the
      nearest rows stay visible to every layer).
    * Their residual connection of the horizontal stack in the skip model is a 1×1
      convolution of the input *including* the z maps; here it is the identity on h_{l-1}
      (a 1×1 convolution only where the channel count changes), as in their non-skip model;
      z reaches the layer through its gated convolutions either way.
    * Their output z map has one channel whatever ``latent_feature_map`` is; here the output
      gets ``z_maps`` like every layer. Their non-skip model also feeds no z to the output.
    * Their Linear layers use He-normal initialisation; here PyTorch's default.

    The parameter shape may have trailing dimensions beyond ``(C, H, W)`` (e.g. the
    categories of a categorical likelihood): the output convolution then has C × prod(extra)
    channels. Channels of one pixel are conditionally independent given x_<i and z.

    :param int latent_dim: size of z.
    :param tuple output_shape: likelihood parameter shape ``(C, H, W, *extra)``; the data
        are images ``(C, H, W)``.
    :param bool skip: z into every layer and the output (default True).
    :param int num_layers: L (default: the length of a list given for ``channels`` or
        ``kernel_sizes``, else 4).
    :param channels: channels of every gated layer, an int (default 8) or one per layer.
    :param kernel_sizes: kernel size k of every layer, an int or one per layer (default:
        7 for the first layer, 3 for the others).
    :param int z_maps: feature maps per layer made from z (default 1).

    Memory: without gradients (evaluation, importance sampling, generation) the network runs
    on at most :attr:`chunk_size` images at a time, whatever the number of particles × data
    points it is given.

    >>> decoder = PixelCNNDecoder(20, (1, 28, 28))
    >>> x = torch.zeros(5, 1, 28, 28)
    >>> decoder(torch.randn(3, 5, 20), x).shape    # 3 particles × 5 images
    torch.Size([3, 5, 1, 28, 28])
    """

    autoregressive = True
    #: most images per network call when no gradient is recorded: a memory bound (about
    #: 2 · channels · H · W · 4 bytes per image and activation), and on a CPU about the
    #: fastest size (measured 2× faster than 1,000: the activations stay in cache); on a GPU
    #: a larger value may be faster
    chunk_size = 100

    def __init__(
        self,
        latent_dim,
        output_shape,
        *,
        skip=True,
        num_layers=None,
        channels=8,
        kernel_sizes=None,
        z_maps=1,
    ):
        super().__init__(latent_dim, output_shape, skip=skip)
        if len(self.output_shape) < 3:
            raise ConfigError(
                "pixelcnn decoder: expected image data of shape (C, H, W) (e.g. (1, 28, 28)); "
                f"the likelihood's parameter shape is {self.output_shape}"
            )
        self.data_shape = self.output_shape[:3]
        self.extra_shape = self.output_shape[3:]
        if num_layers is None:
            lists = [v for v in (channels, kernel_sizes) if isinstance(v, list | tuple)]
            num_layers = len(lists[0]) if lists else DEFAULT_NUM_LAYERS
        check_count("num_layers", num_layers)
        self.channels = per_layer("channels", channels, num_layers)
        if kernel_sizes is None:
            kernel_sizes = [DEFAULT_FIRST_KERNEL] + [DEFAULT_KERNEL] * (num_layers - 1)
        self.kernel_sizes = per_layer("kernel_sizes", kernel_sizes, num_layers)
        #: rows above a pixel that its parameters depend on: the first layer's shifted
        #: kernel reaches k//2 + 1 rows up, every later one k//2 more
        self.reach = 1 + sum(k // 2 for k in self.kernel_sizes)
        self.num_z_maps = check_count("z_maps", z_maps)
        c, height, width = self.data_shape
        widths = (c, *self.channels)
        self.layers = nn.ModuleList(
            GatedLayer(
                widths[i],
                widths[i + 1],
                self.kernel_sizes[i],
                first=i == 0,
                z_maps=z_maps if i == 0 or skip else 0,
            )
            for i in range(num_layers)
        )
        # One Linear(z) per place z enters: layer 1 only, or every layer and the output.
        self.z_linears = nn.ModuleList(
            nn.Linear(latent_dim, z_maps * height * width)
            for _ in range(num_layers + 1 if skip else 1)
        )
        self.output = nn.Conv2d(
            self.channels[-1] + (z_maps if skip else 0), c * math.prod(self.extra_shape), 1
        )

    def forward(self, z, x=None):
        if x is None:
            raise ConfigError(
                "pixelcnn decoder: the parameters of pixel i depend on x_<i, so forward needs "
                "the images x (teacher forcing); generate with decoder.sample(z, likelihood)"
            )
        batch = torch.broadcast_shapes(z.shape[:-1], x.shape[:-3])
        n = math.prod(batch)
        z_flat = z.expand(*batch, self.latent_dim).reshape(n, self.latent_dim)
        x_flat = x.to(z.dtype).expand(*batch, *self.data_shape).reshape(n, *self.data_shape)
        if n <= self.chunk_size or torch.is_grad_enabled():
            out = self._network(z_flat, x_flat)
        else:
            out = torch.cat(
                [
                    self._network(z_flat[s : s + self.chunk_size], x_flat[s : s + self.chunk_size])
                    for s in range(0, n, self.chunk_size)
                ]
            )
        return out.reshape(*batch, *self.output_shape)

    def _network(self, z, x, first_row=0):
        """Parameters ``(n, C, rows, W, *extra)`` for a band ``x`` of shape ``(n, C, rows, W)``
        holding image rows ``first_row`` … ``first_row + rows − 1``. The parameters of the
        band's last row are exact when the band starts at least :attr:`reach` rows above it
        (or at the top): rows below never influence rows above, and rows further up do not
        reach it (the rows near the band's top, computed as if the image started there, only
        feed rows outside its reach)."""
        rows = x.shape[-2]
        height, width = self.data_shape[1:]
        band = slice(first_row, first_row + rows)
        maps = [m(z).view(-1, self.num_z_maps, height, width)[:, :, band] for m in self.z_linears]
        v = h = x
        for i, layer in enumerate(self.layers):
            v, h = layer(v, h, maps[i] if i < len(maps) else None)
        if self.skip:
            h = torch.cat([h, maps[-1]], 1)
        out = self.output(h)
        if not self.extra_shape:
            return out
        c, extra = self.data_shape[0], math.prod(self.extra_shape)
        out = out.view(out.shape[0], c, extra, rows, width).movedim(2, -1)
        return out.reshape(out.shape[0], c, rows, width, *self.extra_shape)

    @torch.no_grad()
    def sample(self, z, likelihood):
        """x ~ p(x | z), pixel by pixel in raster order: H × W network passes, the pass for
        row r on the band of rows r − :attr:`reach` … r only. All channels of a pixel are
        drawn together. Cost for n codes: H·W passes of n images of ≤ reach + 1 rows (for
        the defaults on 28×28 images, about 8/28 of a full pass each).
        """
        batch = z.shape[:-1]
        n = math.prod(batch)
        z = z.reshape(n, self.latent_dim)
        x = torch.zeros(n, *self.data_shape, dtype=z.dtype, device=z.device)
        params = torch.zeros(n, *self.output_shape, dtype=z.dtype, device=z.device)
        height, width = self.data_shape[1:]
        for r in range(height):
            top = max(0, r - self.reach)
            for c in range(width):
                out = torch.cat(
                    [
                        self._network(
                            z[s : s + self.chunk_size],
                            x[s : s + self.chunk_size, :, top : r + 1],
                            first_row=top,
                        )
                        for s in range(0, n, self.chunk_size)
                    ]
                )
                # The likelihood sees full-size parameters (it may hold per-pixel
                # parameters of its own); only pixel (r, c) of the draw is kept.
                params[:, :, r] = out[:, :, -1]
                x[:, :, r, c] = likelihood(params).sample()[:, :, r, c].to(x.dtype)
        return x.reshape(*batch, *self.data_shape)
