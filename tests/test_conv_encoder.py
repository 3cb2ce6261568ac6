"""The residual convolutional encoder: sizes, batch normalisation's two modes, options."""

import pytest
import torch

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.guides import ConvEncoder
from pyro_skipvae.modes import evaluating


def binary(shape, seed=0):
    """Synthetic binary images (shape and mode checks only)."""
    return torch.bernoulli(torch.full(shape, 0.3), generator=torch.Generator().manual_seed(seed))


def test_three_stride_two_blocks_take_28_pixels_to_3():
    encoder = ConvEncoder((1, 28, 28), 20)
    assert encoder.loc.in_features == 32 * 3 * 3
    loc, log_var = encoder(binary((5, 1, 28, 28)))
    assert loc.shape == log_var.shape == (5, 20)
    papers = ConvEncoder((1, 28, 28), 20, channels=64)
    assert papers.loc.in_features == 64 * 3 * 3
    per_block = ConvEncoder((1, 28, 28), 20, channels=[16, 32], num_blocks=2)
    assert per_block.loc.in_features == 32 * 7 * 7


def test_evaluation_uses_running_statistics():
    """In train mode batch normalisation mixes the images of a batch; in eval mode an
    image's code does not depend on its batch."""
    torch.manual_seed(0)
    encoder = ConvEncoder((1, 12, 12), 3, channels=4, num_blocks=2)
    x = binary((8, 1, 12, 12))
    for _ in range(3):  # move the running statistics away from their initial values
        encoder(x)
    alone, batch = encoder(x[:1])[0], encoder(x)[0][:1]
    assert not torch.allclose(alone, batch)
    with evaluating(encoder):
        torch.testing.assert_close(encoder(x[:1])[0], encoder(x)[0][:1])
    assert encoder.training  # the mode is restored


def test_running_statistics_are_saved_and_loaded(tmp_path):
    vae = SkipVAE(
        (1, 12, 12),
        latent_dim=3,
        encoder="conv",
        encoder_options={"channels": 4, "num_blocks": 2},
        hidden_dims=(8,),
        seed=0,
    )
    x = binary((8, 1, 12, 12))
    vae.guide.encoder(x)  # train mode: updates the running statistics
    vae.save(tmp_path / "vae.pt")
    loaded = SkipVAE.load(tmp_path / "vae.pt")
    assert loaded.config.encoder_options == {"channels": 4, "num_blocks": 2}
    torch.testing.assert_close(loaded.encode(x), vae.encode(x))
    bn = loaded.guide.encoder.body[0].bn1
    assert bn.num_batches_tracked.item() == 1


@pytest.mark.parametrize(
    "data_shape,options,message",
    [
        ((1, 6, 6), {}, "at least 8×8"),
        ((784,), {}, r"\(C, H, W\)"),
        ((1, 28, 28), {"channels": [8, 8], "num_blocks": 3}, "one value per layer"),
        ((1, 28, 28), {"num_blocks": 0}, "num_blocks"),
    ],
)
def test_bad_shapes_and_options_are_config_errors(data_shape, options, message):
    with pytest.raises(ConfigError, match=message):
        ConvEncoder(data_shape, 2, **options)
