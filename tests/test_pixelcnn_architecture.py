"""The documented architecture of the gated PixelCNN decoder and of the residual convolutional
encoder: layer shapes, defaults, the pixels each convolution reads (written out as explicit
sums over the offsets the docstrings list, not as padded convolutions), and the errors.

All images and codes here are synthetic (random tensors, for shape and formula checks only).
"""

import math

import pytest
import torch
from torch import nn

from pyro_skipvae import ConfigError
from pyro_skipvae.guides import ConvEncoder
from pyro_skipvae.guides.conv import ResidualBlock
from pyro_skipvae.models import PixelCNNDecoder
from pyro_skipvae.models.decoders.pixelcnn import GatedLayer


# ----------------------------------------------------------------------------- references
def shifted(x, dr, dc):
    """y[..., r, c] = x[..., r + dr, c + dc], zero outside the image."""
    out = torch.zeros_like(x)
    height, width = x.shape[-2:]
    r0, r1 = max(0, -dr), min(height, height - dr)
    c0, c1 = max(0, -dc), min(width, width - dc)
    if r0 < r1 and c0 < c1:
        out[..., r0:r1, c0:c1] = x[..., r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    return out


def conv_by_offsets(x, conv, row_offsets, col_offsets):
    """out[:, :, r, c] = b + Σ_ij W[:, :, i, j] x[:, :, r + row_offsets[i], c + col_offsets[j]]."""
    weight = conv.weight
    assert weight.shape[-2:] == (len(row_offsets), len(col_offsets))
    out = conv.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:]).clone()
    for i, dr in enumerate(row_offsets):
        for j, dc in enumerate(col_offsets):
            out = out + torch.einsum("oi,nihw->nohw", weight[:, :, i, j], shifted(x, dr, dc))
    return out


def gate(pre):
    channels = pre.shape[1] // 2
    return torch.tanh(pre[:, :channels]) * torch.sigmoid(pre[:, channels:])


def gated_layer_by_hand(layer, v, h, maps):
    """GatedLayer's docstring: vertical rows r−p … r (mask A: r−p−1 … r−1), columns
    c−p … c+k−1−p; horizontal row r, columns c−p … c (mask A: c−p−1 … c−1)."""
    k = layer.kernel_size
    p, s = k // 2, 1 if layer.first else 0
    v_in = v if maps is None else torch.cat([v, maps], 1)
    h_in = h if maps is None else torch.cat([h, maps], 1)
    v_pre = conv_by_offsets(v_in, layer.vertical, range(-p - s, -s + 1), range(-p, k - p))
    h_pre = conv_by_offsets(h_in, layer.horizontal, [0], range(-p - s, -s + 1))
    h_pre = h_pre + conv_by_offsets(v_pre, layer.vertical_to_horizontal, [0], [0])
    h_out = conv_by_offsets(gate(h_pre), layer.out, [0], [0])
    if not layer.first:
        if h.shape[1] == h_out.shape[1]:
            h_out = h_out + h
        else:
            h_out = h_out + conv_by_offsets(h, layer.residual, [0], [0])
    return gate(v_pre), h_out


def decoder_by_hand(decoder, z, x):
    """η = W_out * [h_L, m_{L+1}] with m_l = reshape(A_l z + a_l); z maps into layer 1 only
    without skip. Parameters (n, C, H, W, *extra), conv channel c·E + e holding category e."""
    c, height, width = decoder.data_shape
    maps = [
        (z @ lin.weight.T + lin.bias).view(-1, decoder.num_z_maps, height, width)
        for lin in decoder.z_linears
    ]
    v = h = x
    for i, layer in enumerate(decoder.layers):
        v, h = gated_layer_by_hand(layer, v, h, maps[i] if i == 0 or decoder.skip else None)
    if decoder.skip:
        h = torch.cat([h, maps[len(decoder.layers)]], 1)
    out = conv_by_offsets(h, decoder.output, [0], [0])
    extra = math.prod(decoder.extra_shape)
    out = out.view(out.shape[0], c, extra, height, width).permute(0, 1, 3, 4, 2)
    return out.reshape(out.shape[0], c, height, width, *decoder.extra_shape)


def randomise(module, seed=0):
    """Nonzero random weights and biases everywhere (PyTorch's defaults are small)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.7)
    return module


def conv_shape(conv):
    return tuple(conv.weight.shape)


# ----------------------------------------------------------------------------- PixelCNN
def test_pixelcnn_defaults_are_the_documented_cpu_architecture():
    """4 gated layers of 8 channels, kernels 7, 3, 3, 3, one z map, skip; reach 7 rows."""
    decoder = PixelCNNDecoder(20, (1, 28, 28))
    assert decoder.skip is True and decoder.latent_dim == 20
    assert decoder.output_shape == (1, 28, 28) and decoder.data_shape == (1, 28, 28)
    assert decoder.extra_shape == ()
    assert decoder.num_z_maps == 1 and decoder.reach == 7
    assert decoder.autoregressive and decoder.chunk_size == 100
    assert len(decoder.layers) == 4
    # layer 1 (mask A): reads the image and one z map; 2·8 gate channels
    first = decoder.layers[0]
    assert first.first is True and first.kernel_size == 7 and first.residual is None
    assert conv_shape(first.vertical) == (16, 2, 4, 7)
    assert conv_shape(first.horizontal) == (16, 2, 1, 4)
    assert conv_shape(first.vertical_to_horizontal) == (16, 16, 1, 1)
    assert conv_shape(first.out) == (8, 8, 1, 1)
    for layer in decoder.layers[1:]:  # mask B, 3×3, z map in every layer (skip)
        assert layer.first is False and layer.kernel_size == 3
        assert isinstance(layer.residual, nn.Identity)
        assert conv_shape(layer.vertical) == (16, 9, 2, 3)
        assert conv_shape(layer.horizontal) == (16, 9, 1, 2)
        assert conv_shape(layer.vertical_to_horizontal) == (16, 16, 1, 1)
        assert conv_shape(layer.out) == (8, 8, 1, 1)
    assert len(decoder.z_linears) == 5
    for lin in decoder.z_linears:
        assert tuple(lin.weight.shape) == (784, 20) and tuple(lin.bias.shape) == (784,)
    assert conv_shape(decoder.output) == (1, 9, 1, 1)
    gated = 2 * 16 * 4 * 7 + 2 * 16 * 4 + 16 * 16 + 8 * 8 + 3 * (9 * 16 * (6 + 2) + 16 * 16 + 8 * 8)
    biases = 4 * (16 + 16 + 16 + 8)
    assert sum(p.numel() for p in decoder.parameters()) == (
        gated + biases + 5 * (784 * 20 + 784) + 9 + 1
    )


def test_pixelcnn_without_skip_feeds_z_to_the_first_layer_only():
    decoder = PixelCNNDecoder(
        3, (2, 5, 6, 3), skip=False, channels=[4, 6], kernel_sizes=[5, 3], z_maps=2
    )
    assert decoder.skip is False and decoder.channels == (4, 6) and decoder.kernel_sizes == (5, 3)
    assert decoder.data_shape == (2, 5, 6) and decoder.extra_shape == (3,)
    assert decoder.reach == 1 + 2 + 1
    first, second = decoder.layers
    assert conv_shape(first.vertical) == (8, 2 + 2, 3, 5)
    assert conv_shape(first.horizontal) == (8, 4, 1, 3)
    assert conv_shape(second.vertical) == (12, 4, 2, 3)  # no z maps
    assert conv_shape(second.horizontal) == (12, 4, 1, 2)
    assert conv_shape(second.vertical_to_horizontal) == (12, 12, 1, 1)
    assert conv_shape(second.out) == (6, 6, 1, 1)
    assert conv_shape(second.residual) == (6, 4, 1, 1)  # channel count changes: 1×1 conv
    assert len(decoder.z_linears) == 1
    assert tuple(decoder.z_linears[0].weight.shape) == (2 * 5 * 6, 3)
    assert conv_shape(decoder.output) == (2 * 3, 6, 1, 1)  # C × categories, no z maps


@pytest.mark.parametrize(
    "options,layers,kernels,widths",
    [
        ({}, 4, (7, 3, 3, 3), (8,) * 4),
        ({"channels": [4, 5, 6]}, 3, (7, 3, 3), (4, 5, 6)),
        ({"kernel_sizes": [5, 3]}, 2, (5, 3), (8, 8)),
        ({"kernel_sizes": (3, 5, 3)}, 3, (3, 5, 3), (8, 8, 8)),
        ({"num_layers": 2}, 2, (7, 3), (8, 8)),
        ({"num_layers": 1}, 1, (7,), (8,)),
        ({"num_layers": 3, "channels": 5, "kernel_sizes": 5}, 3, (5, 5, 5), (5, 5, 5)),
    ],
)
def test_pixelcnn_number_of_layers_follows_the_lists_given(options, layers, kernels, widths):
    decoder = PixelCNNDecoder(2, (1, 6, 6), **options)
    assert len(decoder.layers) == layers
    assert decoder.kernel_sizes == kernels and decoder.channels == widths
    assert [layer.kernel_size for layer in decoder.layers] == list(kernels)
    assert [layer.first for layer in decoder.layers] == [True] + [False] * (layers - 1)
    assert decoder.reach == 1 + sum(k // 2 for k in kernels)
    assert len(decoder.z_linears) == layers + 1


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize(
    "output_shape,options",
    [
        ((1, 4, 5), {"channels": 3, "kernel_sizes": [5, 3]}),
        ((2, 5, 4, 3), {"channels": [3, 4, 4], "kernel_sizes": [3, 5, 3], "z_maps": 2}),
    ],
)
def test_pixelcnn_parameters_are_the_gated_equations(float64, skip, output_shape, options):
    decoder = randomise(PixelCNNDecoder(3, output_shape, skip=skip, **options))
    gen = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((3, *output_shape[:3]), 0.5), generator=gen)
    z = torch.randn(3, 3, generator=gen)
    expected = decoder_by_hand(decoder, z, x)
    got = decoder(z, x)
    assert got.shape == (3, *output_shape)  # 3 images: not C of them
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 5, 4])
@pytest.mark.parametrize("z_maps", [0, 2])
def test_gated_layer_reads_the_documented_pixels(float64, first, kernel_size, z_maps):
    layer = randomise(GatedLayer(3, 3 if not first else 4, kernel_size, first=first, z_maps=z_maps))
    gen = torch.Generator().manual_seed(2)
    v, h = torch.randn(2, 3, 5, 6, generator=gen), torch.randn(2, 3, 5, 6, generator=gen)
    maps = torch.randn(2, z_maps, 5, 6, generator=gen) if z_maps else None
    got = layer(v, h, maps) if maps is not None else layer(v, h)
    expected = gated_layer_by_hand(layer, v, h, maps)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_gated_layer_residual_is_a_projection_where_the_width_changes(float64):
    layer = GatedLayer(2, 5, 3, first=False, z_maps=1)
    assert conv_shape(layer.residual) == (5, 2, 1, 1)
    assert isinstance(GatedLayer(5, 5, 3, first=False, z_maps=0).residual, nn.Identity)
    assert GatedLayer(5, 5, 3, first=True, z_maps=0).residual is None


def test_pixelcnn_particles_broadcast_and_chunks_give_the_same_parameters(float64):
    decoder = randomise(PixelCNNDecoder(2, (1, 3, 4), channels=2, kernel_sizes=3))
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((5, 1, 3, 4), 0.5), generator=gen)
    z = torch.randn(3, 5, 2, generator=gen)  # 3 particles × 5 images
    full = decoder(z, x)
    assert full.shape == (3, 5, 1, 3, 4)
    for s in range(3):
        for i in range(5):
            one = decoder_by_hand(decoder, z[s, i : i + 1], x[i : i + 1])[0]
            assert torch.allclose(full[s, i], one, rtol=1e-10, atol=1e-10)
    # images stored as bytes are read as numbers of z's dtype
    assert torch.allclose(decoder(z, x.to(torch.uint8)), full, rtol=1e-12, atol=1e-12)
    decoder.chunk_size = 4  # 15 images: chunks of 4, 4, 4, 3 without gradients
    with torch.no_grad():
        chunked = decoder(z, x)
    assert torch.allclose(chunked, full, rtol=1e-12, atol=1e-12)
    # x with a particle dimension and z without one broadcast the other way
    xs = x.expand(3, 5, 1, 3, 4)
    assert torch.allclose(decoder(z[0], xs), full[0].expand(3, 5, 1, 3, 4), rtol=1e-12, atol=1e-12)


def test_pixelcnn_band_of_rows_uses_the_z_maps_of_those_rows(float64):
    decoder = randomise(
        PixelCNNDecoder(2, (1, 6, 3), channels=2, kernel_sizes=3, num_layers=2, z_maps=2)
    )
    assert decoder.reach == 3
    gen = torch.Generator().manual_seed(4)
    x = torch.bernoulli(torch.full((2, 1, 6, 3), 0.5), generator=gen)
    z = torch.randn(2, 2, generator=gen)
    full = decoder._network(z, x)
    # rows 0 … r, from the top: identical to the full pass on those rows
    top = decoder._network(z, x[:, :, :4])
    assert torch.allclose(top, full[:, :, :4], rtol=1e-12, atol=1e-12)
    # a band starting `reach` rows above its last row gives that row exactly
    band = decoder._network(z, x[:, :, 2:6], first_row=2)
    assert band.shape == (2, 1, 4, 3)
    assert torch.allclose(band[:, :, -1], full[:, :, 5], rtol=1e-12, atol=1e-12)
    # … also in the middle of the image (rows 1 … 4 for row 4)
    middle = decoder._network(z, x[:, :, 1:5], first_row=1)
    assert middle.shape == (2, 1, 4, 3)
    assert torch.allclose(middle[:, :, -1], full[:, :, 4], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options,output_shape,message",
    [
        (
            {},
            (5, 5),
            r"^pixelcnn decoder: expected image data of shape \(C, H, W\) \(e\.g\. \(1, 28, 28\)\); "
            r"the likelihood's parameter shape is \(5, 5\)$",
        ),
        ({"num_layers": 0}, (1, 5, 5), "num_layers must be a positive integer, found 0"),
        ({"num_layers": True}, (1, 5, 5), "num_layers must be a positive integer"),
        (
            {"channels": [2, 3], "num_layers": 3},
            (1, 5, 5),
            r"channels must give one value per layer \(3 layers\)",
        ),
        (
            {"kernel_sizes": [3, 3], "num_layers": 3},
            (1, 5, 5),
            r"kernel_sizes must give one value per layer \(3",
        ),
        ({"kernel_sizes": 0}, (1, 5, 5), "kernel_sizes must be one or more positive widths"),
        ({"channels": 0}, (1, 5, 5), "channels must be one or more positive widths"),
        ({"z_maps": 0}, (1, 5, 5), "z_maps must be a positive integer, found 0"),
    ],
)
def test_pixelcnn_bad_options_name_the_option(options, output_shape, message):
    with pytest.raises(ConfigError, match=message):
        PixelCNNDecoder(2, output_shape, **options)


def test_pixelcnn_accepts_the_smallest_valid_options():
    decoder = PixelCNNDecoder(1, (1, 1, 1), num_layers=1, channels=1, kernel_sizes=1, z_maps=1)
    assert decoder.reach == 1
    out = decoder(torch.zeros(1), torch.zeros(1, 1, 1))
    assert out.shape == (1, 1, 1)


def test_pixelcnn_forward_without_x_explains_teacher_forcing():
    decoder = PixelCNNDecoder(2, (1, 5, 5))
    with pytest.raises(
        ConfigError,
        match=r"forward needs the images x \(teacher forcing\); generate with decoder\.sample",
    ):
        decoder(torch.randn(1, 2))


# ----------------------------------------------------------------------------- conv encoder
def block_by_hand(block, x):
    """y = ReLU(P x + BN(conv(ReLU(BN(conv(x)))))) with 3×3 convolutions, evaluation mode."""

    def bn(t, norm):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return (t - norm.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.view(
            1, -1, 1, 1
        )

    offsets = range(-1, 2)
    y = torch.relu(bn(conv_by_offsets(x, block.conv1, offsets, offsets), block.bn1))
    y = bn(conv_by_offsets(y, block.conv2, offsets, offsets), block.bn2)
    projected = x if x.shape[1] == y.shape[1] else conv_by_offsets(x, block.project, [0], [0])
    return torch.relu(projected + y)


def randomise_norms(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(
                torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype)
            )
            m.running_var.copy_(
                torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5
            )
    return module


@pytest.mark.parametrize("in_channels,channels", [(2, 3), (3, 3)])
def test_residual_block_is_the_documented_formula(float64, in_channels, channels):
    block = randomise_norms(randomise(ResidualBlock(in_channels, channels)), seed=1).eval()
    assert conv_shape(block.conv1) == (channels, in_channels, 3, 3)
    assert conv_shape(block.conv2) == (channels, channels, 3, 3)
    assert block.bn1.num_features == channels and block.bn2.num_features == channels
    if in_channels == channels:
        assert isinstance(block.project, nn.Identity)
    else:
        assert conv_shape(block.project) == (channels, in_channels, 1, 1)
    x = torch.randn(2, in_channels, 5, 4, generator=torch.Generator().manual_seed(5))
    got = block(x)
    assert got.shape == (2, channels, 5, 4)
    assert torch.allclose(got, block_by_hand(block, x), rtol=1e-10, atol=1e-10)


def test_conv_encoder_defaults_are_three_blocks_of_32_channels():
    encoder = ConvEncoder((1, 28, 28), 20)
    assert encoder.data_shape == (1, 28, 28) and encoder.latent_dim == 20
    stages = list(encoder.body)
    assert len(stages) == 6
    for b, in_channels in enumerate([1, 32, 32]):
        block, down = stages[2 * b], stages[2 * b + 1]
        assert isinstance(block, ResidualBlock)
        assert conv_shape(block.conv1) == (32, in_channels, 3, 3)
        assert conv_shape(down) == (32, 32, 2, 2) and down.stride == (2, 2)
    assert tuple(encoder.loc.weight.shape) == (20, 32 * 3 * 3)
    assert tuple(encoder.log_var.weight.shape) == (20, 32 * 3 * 3)


@pytest.mark.parametrize(
    "data_shape,options,features",
    [
        ((2, 16, 12), {"channels": [3, 5]}, 5 * 4 * 3),
        ((1, 9, 17), {"channels": 4, "num_blocks": 3}, 4 * 1 * 2),
        ((1, 8, 8), {}, 32 * 1 * 1),
        ((1, 8, 9), {"channels": [2, 3, 4]}, 4 * 1 * 1),
    ],
)
def test_conv_encoder_is_the_documented_stack(float64, data_shape, options, features):
    encoder = randomise_norms(randomise(ConvEncoder(data_shape, 3, **options)), seed=2).eval()
    stages = list(encoder.body)
    assert tuple(encoder.loc.weight.shape) == (3, features)
    gen = torch.Generator().manual_seed(6)
    x = torch.bernoulli(torch.full((2, *data_shape), 0.5), generator=gen).to(torch.uint8)
    h = x.to(torch.float64)
    for block, down in zip(stages[::2], stages[1::2]):
        h = block_by_hand(block, h)
        # 2×2 stride 2: output (i, j) reads input rows 2i, 2i+1 and columns 2j, 2j+1
        h = conv_by_offsets(h, down, [0, 1], [0, 1])[:, :, ::2, ::2][
            :, :, : h.shape[-2] // 2, : h.shape[-1] // 2
        ]
    h = h.flatten(1)
    loc, log_var = encoder(x)
    assert torch.allclose(loc, h @ encoder.loc.weight.T + encoder.loc.bias, rtol=1e-10, atol=1e-10)
    assert torch.allclose(
        log_var, h @ encoder.log_var.weight.T + encoder.log_var.bias, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize(
    "data_shape,options,message",
    [
        ((1, 28), {}, r"conv encoder: expected image data of shape \(C, H, W\), found \(1, 28\)"),
        ((1, 2, 3, 4), {}, r"expected image data of shape \(C, H, W\)"),
        (
            (1, 7, 8),
            {},
            "conv encoder: 3 stride-2 blocks need images of at least 8×8 pixels, found 7×8",
        ),
        ((1, 8, 7), {}, "at least 8×8 pixels, found 8×7"),
        ((1, 15, 40), {"num_blocks": 4}, "4 stride-2 blocks need images of at least 16×16 pixels"),
        ((1, 28, 28), {"num_blocks": 0}, "num_blocks must be a positive integer, found 0"),
        (
            (1, 28, 28),
            {"channels": [4, 4], "num_blocks": 3},
            r"channels must give one value per layer \(3",
        ),
        ((1, 28, 28), {"channels": 0}, "channels must be one or more positive widths"),
    ],
)
def test_conv_encoder_bad_shapes_name_the_limit(data_shape, options, message):
    with pytest.raises(ConfigError, match=message):
        ConvEncoder(data_shape, 2, **options)


def test_conv_encoder_accepts_images_of_exactly_two_to_the_blocks():
    encoder = ConvEncoder((1, 8, 8), 2, channels=2).eval()
    loc, log_var = encoder(torch.zeros(3, 1, 8, 8))
    assert loc.shape == (3, 2) and log_var.shape == (3, 2)
    assert ConvEncoder((1, 4, 5), 2, channels=[2, 2]).loc.in_features == 2 * 1 * 1


def test_pixelcnn_evaluates_an_empty_batch():
    decoder = PixelCNNDecoder(2, (1, 3, 4), channels=2, kernel_sizes=3)
    with torch.no_grad():
        out = decoder(torch.zeros(0, 2), torch.zeros(0, 1, 3, 4))
    assert out.shape == (0, 1, 3, 4)
