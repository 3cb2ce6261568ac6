"""The generative skip connections of the autoregressive decoders, layer by layer, and the
padding invariance of the text likelihood. The LSTM decoder's logits are recomputed by hand
from its weights (the LSTM cell equations written out), so a z fed to the wrong layer, a
missing initial state or a skip path present without ``skip`` changes the numbers; the
PixelCNN's z maps are checked at the input of every gated layer and of the output
convolution. All tensors are synthetic (random weights and token ids)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_skipvae.models import LSTMDecoder, PixelCNNDecoder
from pyro_skipvae.models.likelihoods import CategoricalLikelihood

pytestmark = pytest.mark.usefixtures("float64")

#: token ids of the synthetic vocabulary: 0 pad, 1 unk, 2 bos, 3 eos, 4 … V−1 words
PAD, BOS, VOCAB = 0, 2, 7


def lstm_cell(x, h, c, lstm):
    """One step of a single-layer ``nn.LSTM`` written out (gates in PyTorch's order i, f, g, o)."""
    pre = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
    i, f, g, o = pre.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def logits_by_hand(decoder, z, x):
    """η_t of :class:`LSTMDecoder`'s docstring: layer 1 reads [E x_{t−1}; z], layer l > 1 reads
    [h^{l−1}_t; z] with skip (h^{l−1}_t without), the softmax layer [h^L_t; z] with skip;
    the top layer starts from h = A z + a, c = 0, the others from zeros; padding and BOS are
    never predicted."""
    n, length = x.shape
    layers, hidden = len(decoder.lstms), decoder.lstms[0].hidden_size
    h = [torch.zeros(n, hidden) for _ in range(layers)]
    c = [torch.zeros(n, hidden) for _ in range(layers)]
    h[-1] = z @ decoder.init_hidden.weight.T + decoder.init_hidden.bias
    previous = torch.full((n,), BOS)
    out = []
    for t in range(length):
        below = torch.cat([decoder.embedding.weight[previous], z], -1)
        for layer, lstm in enumerate(decoder.lstms):
            if layer > 0:
                below = torch.cat([h[layer - 1], z], -1) if decoder.skip else h[layer - 1]
            h[layer], c[layer] = lstm_cell(below, h[layer], c[layer], lstm)
        top = torch.cat([h[-1], z], -1) if decoder.skip else h[-1]
        logits = top @ decoder.output.weight.T + decoder.output.bias
        logits[:, [PAD, BOS]] = -torch.inf
        out.append(logits)
        previous = x[:, t]
    return torch.stack(out, 1)


def small_lstm(skip, num_layers=2, seed=0):
    torch.manual_seed(seed)
    return LSTMDecoder(
        3,
        (5, VOCAB),
        skip=skip,
        embedding_dim=4,
        hidden_dim=5,
        num_layers=num_layers,
        dropout=0.0,
        init_scale=0.5,
    ).eval()


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("skip", [True, False])
def test_lstm_logits_follow_the_skip_equations(skip, num_layers):
    decoder = small_lstm(skip, num_layers)
    x = torch.tensor([[4, 5, 6, 3, 0], [5, 5, 3, 0, 0], [6, 4, 4, 5, 3]])
    z = torch.randn(3, 3)
    expected = logits_by_hand(decoder, z, x)
    assert torch.allclose(decoder(z, x), expected, rtol=1e-12, atol=1e-12)


def test_without_skip_z_reaches_the_lstm_logits_through_layer_one_only():
    """Cut z's two entries into a plain decoder (layer 1's input columns and the initial
    state): its logits no longer depend on z at all, whatever the depth."""
    decoder = small_lstm(False, num_layers=3)
    with torch.no_grad():
        decoder.lstms[0].weight_ih_l0[:, 4:] = 0
        decoder.init_hidden.weight.zero_()
    x = torch.tensor([[4, 5, 6, 3, 0]])
    assert torch.equal(decoder(torch.zeros(1, 3), x), decoder(torch.randn(1, 3), x))


def pixelcnn_inputs(decoder, z, x):
    """The z maps each gated layer receives and the input of the output convolution."""
    seen, hooks = {}, []
    for i, layer in enumerate(decoder.layers):
        hooks.append(
            layer.register_forward_pre_hook(
                lambda _, args, i=i: seen.__setitem__(i, args[2] if len(args) > 2 else None)
            )
        )
    hooks.append(
        decoder.output.register_forward_pre_hook(lambda _, args: seen.__setitem__("out", args[0]))
    )
    decoder(z, x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("skip", [True, False])
def test_pixelcnn_z_maps_enter_each_layer_as_documented(skip):
    """m_l = reshape(A_l z + a_l): with skip layer l gets its own m_l and the output conv reads
    [h_L; m_{L+1}]; without skip layer 1 gets m_1 and nothing else reads z."""
    torch.manual_seed(0)
    maps, (height, width) = 2, (4, 3)
    decoder = PixelCNNDecoder(
        3, (1, height, width), skip=skip, num_layers=3, channels=4, kernel_sizes=3, z_maps=maps
    )
    z = torch.randn(2, 3)
    x = torch.bernoulli(torch.full((2, 1, height, width), 0.5))
    seen = pixelcnn_inputs(decoder, z, x)

    def m(linear):
        return (z @ linear.weight.T + linear.bias).view(2, maps, height, width)

    assert torch.equal(seen[0], m(decoder.z_linears[0]))
    for layer in (1, 2):
        if skip:
            assert torch.equal(seen[layer], m(decoder.z_linears[layer]))
        else:
            assert seen[layer] is None
    assert seen["out"].shape[1] == 4 + (maps if skip else 0)
    if skip:
        assert torch.equal(seen["out"][:, 4:], m(decoder.z_linears[3]))


# ------------------------------------------------------------------ padding invariance
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**16),
    skip=st.booleans(),
)
def test_padding_never_changes_a_sentences_log_likelihood(lengths, extra, seed, skip):
    """log p(x | z) of each sentence in a padded batch (of any width ≥ its longest sentence)
    equals that of the sentence on its own without padding: the masked categorical
    likelihood and the decoder see real tokens only."""
    decoder = small_lstm(skip, num_layers=2, seed=seed % 7)
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra
    x = torch.full((len(lengths), width), PAD)
    for n, length in enumerate(lengths):
        x[n, :length] = torch.randint(4, VOCAB, (length,), generator=g)
    z = torch.randn(len(lengths), 3, generator=g)

    def log_p(x, z):
        likelihood = CategoricalLikelihood((x.shape[-1],), num_categories=VOCAB, pad_index=PAD)
        likelihood.validate(x)
        return likelihood(decoder(z, x), x).log_prob(x)

    batch = log_p(x, z)
    assert batch.shape == (len(lengths),) and torch.isfinite(batch).all()
    for n, length in enumerate(lengths):
        alone = log_p(x[n : n + 1, :length], z[n : n + 1])[0]
        assert torch.allclose(batch[n], alone, rtol=1e-12, atol=1e-12)
        # and it is the sum of the per-token log-softmax of the hand-computed logits
        logits = logits_by_hand(decoder, z[n : n + 1], x[n : n + 1, :length])[0]
        by_hand = logits.log_softmax(-1)[torch.arange(length), x[n, :length]].sum()
        assert torch.allclose(batch[n], by_hand, rtol=1e-12, atol=1e-12)
