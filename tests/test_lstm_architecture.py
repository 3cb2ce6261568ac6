"""The documented architecture of the LSTM decoder and encoder (layer sizes, defaults, the
initialisation, the checks of their options), the :class:`Decoder` interface, and the
homotopy of diagnostics/text.py. Token sequences here are synthetic (small hand-written id
tensors over a toy vocabulary)."""

import math

import pytest
import torch

from pyro_skipvae import ConfigError
from pyro_skipvae.data.text import BOS_INDEX, EOS_INDEX, PAD_INDEX, UNK_INDEX
from pyro_skipvae.diagnostics.text import homotopy
from pyro_skipvae.guides.lstm import LSTMEncoder
from pyro_skipvae.models import LSTMDecoder
from pyro_skipvae.models.decoders.base import Decoder


def cell(x, h, c, lstm, layer=0):
    """One step of layer ``layer`` of an ``nn.LSTM``, written out (gates i, f, g, o)."""
    w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
    b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def decoder_logits_by_hand(decoder, z, inputs):
    """η_t of LSTMDecoder's docstring for the given input tokens (x_0 = BOS, x_1, …)."""
    n, length = inputs.shape
    layers, hidden = len(decoder.lstms), decoder.lstms[0].hidden_size
    h = [torch.zeros(n, hidden) for _ in range(layers)]
    c = [torch.zeros(n, hidden) for _ in range(layers)]
    h[-1] = z @ decoder.init_hidden.weight.T + decoder.init_hidden.bias
    out = []
    for t in range(length):
        below = torch.cat([decoder.embedding.weight[inputs[:, t]], z], -1)
        for layer, lstm in enumerate(decoder.lstms):
            if layer > 0:
                below = torch.cat([h[layer - 1], z], -1) if decoder.skip else h[layer - 1]
            h[layer], c[layer] = cell(below, h[layer], c[layer], lstm)
            below = h[layer]
        top = torch.cat([h[-1], z], -1) if decoder.skip else h[-1]
        logits = top @ decoder.output.weight.T + decoder.output.bias
        logits[:, decoder.pad_index] = logits[:, decoder.bos_index] = -math.inf
        out.append(logits)
    return torch.stack(out, 1)


#: a toy vocabulary with non-default special ids: 5 pad, 6 unk, 4 bos, 7 eos, words 0–3, 8
SPECIAL = {"pad_index": 5, "unk_index": 6, "bos_index": 4, "eos_index": 7}
V = 9


def toy_decoder(skip=True, num_layers=2, seed=0, **options):
    torch.manual_seed(seed)
    options = {"dropout": 0.0, "init_scale": 0.6, **SPECIAL, **options}
    return LSTMDecoder(
        3, (6, V), skip=skip, embedding_dim=4, hidden_dim=5, num_layers=num_layers, **options
    )


# ----------------------------------------------------------------------------- Decoder base
def test_decoder_base_keeps_its_arguments():
    decoder = Decoder(3, [2, 5], skip=True)
    assert decoder.latent_dim == 3 and decoder.skip is True
    assert decoder.output_shape == (2, 5) and isinstance(decoder.output_shape, tuple)
    assert decoder.output_size == 10 and decoder.autoregressive is False
    assert Decoder(1, (4,), skip=False).skip is False
    with pytest.raises(NotImplementedError):
        decoder(torch.zeros(3))


# ----------------------------------------------------------------------------- decoder
def test_lstm_decoder_defaults_are_documented():
    assert (PAD_INDEX, UNK_INDEX, BOS_INDEX, EOS_INDEX) == (0, 1, 2, 3)
    decoder = LSTMDecoder(4, (6, 11))
    assert decoder.skip is True and decoder.autoregressive
    assert decoder.latent_dim == 4 and decoder.max_length == 6
    assert (decoder.pad_index, decoder.unk_index, decoder.bos_index, decoder.eos_index) == (
        0,
        1,
        2,
        3,
    )
    assert decoder.word_dropout == 0.0 and decoder.dropout.p == 0.5
    assert tuple(decoder.embedding.weight.shape) == (11, 256)
    assert len(decoder.lstms) == 1
    lstm = decoder.lstms[0]
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (256 + 4, 256, 1)
    assert lstm.batch_first is True
    assert tuple(decoder.init_hidden.weight.shape) == (256, 4)
    assert tuple(decoder.output.weight.shape) == (11, 256 + 4)
    # uniform in [−0.1, 0.1] (the authors' init_scale)
    values = torch.cat([p.detach().flatten() for p in decoder.parameters()])
    assert values.abs().max() <= 0.1 and values.max() > 0.099 and values.min() < -0.099
    assert values.mean().abs() < 0.01
    # the padding (0) and BOS (2) logits are −∞, every other one untouched; not saved with
    # the weights
    assert decoder.never[0] == decoder.never[2] == -math.inf
    assert torch.equal(decoder.never[[1, *range(3, 11)]], torch.zeros(9))
    assert "never" not in decoder.state_dict()


@pytest.mark.parametrize("skip", [True, False])
def test_lstm_decoder_layer_sizes_follow_the_skip_equations(skip):
    decoder = LSTMDecoder(3, (6, V), skip=skip, embedding_dim=4, hidden_dim=5, num_layers=3)
    assert decoder.skip is skip
    assert [lstm.input_size for lstm in decoder.lstms] == [4 + 3] + [5 + 3 * skip] * 2
    assert all(lstm.hidden_size == 5 and lstm.num_layers == 1 for lstm in decoder.lstms)
    assert all(lstm.batch_first for lstm in decoder.lstms)
    assert tuple(decoder.output.weight.shape) == (V, 5 + 3 * skip)
    assert tuple(decoder.init_hidden.weight.shape) == (5, 3)
    assert tuple(decoder.embedding.weight.shape) == (V, 4)


def test_lstm_decoder_init_scale_is_the_half_width_of_the_uniform():
    decoder = LSTMDecoder(3, (6, V), embedding_dim=30, hidden_dim=30, init_scale=0.3)
    values = torch.cat([p.detach().flatten() for p in decoder.parameters()])
    assert values.abs().max() <= 0.3 and values.max() > 0.29 and values.min() < -0.29


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_decoder_logits_with_other_special_ids(float64, skip, num_layers):
    decoder = toy_decoder(skip, num_layers).eval()
    x = torch.tensor([[0, 1, 2, 7, 5, 5], [3, 8, 7, 5, 5, 5], [8, 7, 5, 5, 5, 5]])
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    got = decoder(z, x)
    assert got.shape == (3, 4, V)  # up to the longest real sequence (4 tokens)
    inputs = torch.cat([torch.full((3, 1), 4), x[:, :3]], 1)  # BOS (id 4) then x_<t
    assert torch.allclose(got, decoder_logits_by_hand(decoder, z, inputs), rtol=1e-12, atol=1e-12)
    assert torch.all(got[..., 5] == -math.inf) and torch.all(got[..., 4] == -math.inf)
    assert torch.isfinite(got[..., [0, 1, 2, 3, 6, 7, 8]]).all()


def test_scored_and_sampled_next_token_distributions_are_one_over_the_real_tokens(
    float64, monkeypatch
):
    """p(x_t | x_<t, z) puts no mass on padding or BOS (neither is ever a target) and sums
    to one over the other tokens, and generate samples from exactly the distribution that is
    scored (the first token's, from BOS: the same logits, so the same probabilities)."""
    decoder = toy_decoder(init_scale=1.0).eval()
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    x = torch.tensor([[0, 1, 7, 5, 5, 5]] * 4)
    probs = decoder(z, x).softmax(-1)
    assert torch.all(probs[..., 4] == 0) and torch.all(probs[..., 5] == 0)
    real = [0, 1, 2, 3, 6, 7, 8]
    assert torch.allclose(probs[..., real].sum(-1), torch.ones(4, 3), rtol=1e-12)
    sampled = []
    categorical = torch.distributions.Categorical

    def recording(logits):
        drawn = categorical(logits=logits)
        sampled.append(drawn.probs)
        return drawn

    monkeypatch.setattr(torch.distributions, "Categorical", recording)
    decoder.generate(z, max_length=1)
    assert torch.allclose(sampled[0], probs[:, 0], rtol=1e-12, atol=1e-15)


def test_lstm_decoder_output_has_one_position_even_for_empty_sequences(float64):
    decoder = toy_decoder().eval()
    x = torch.full((2, 6), 5)
    z = torch.randn(2, 3)
    got = decoder(z, x)
    assert got.shape == (2, 1, V)
    expected = decoder_logits_by_hand(decoder, z, torch.full((2, 1), 4))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_lstm_decoder_particles_broadcast_over_sequences(float64):
    decoder = toy_decoder().eval()
    x = torch.tensor([[0, 1, 7, 5, 5, 5], [3, 7, 5, 5, 5, 5]])
    z = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(2))  # 4 particles
    got = decoder(z, x)
    assert got.shape == (4, 2, 3, V)
    for s in range(4):
        assert torch.allclose(got[s], decoder(z[s], x), rtol=1e-12, atol=1e-12)
    inputs = torch.cat([torch.full((2, 1), 4), x[:, :2]], 1)
    assert torch.allclose(
        got[1], decoder_logits_by_hand(decoder, z[1], inputs), rtol=1e-12, atol=1e-12
    )
    # one code for several sequences, and sequences with a particle dimension
    one = decoder(z[0, :1], x)
    assert one.shape == (2, 3, V)
    assert torch.allclose(one[1, :2], decoder(z[0, :1], x[1:])[0], rtol=1e-12, atol=1e-12)
    xs = x.expand(4, 2, 6)
    assert torch.allclose(decoder(z, xs), got, rtol=1e-12, atol=1e-12)


def test_word_dropout_replaces_inputs_by_unk_but_never_bos(float64):
    x = torch.tensor([[0, 1, 2, 3, 8, 7], [3, 8, 0, 7, 5, 5]])
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    decoder = toy_decoder(word_dropout=0.9999).train()
    assert decoder.word_dropout == 0.9999
    torch.manual_seed(0)
    got = decoder(z, x)
    all_unk = torch.cat([torch.full((2, 1), 4), torch.full((2, 5), 6)], 1)
    assert torch.allclose(got, decoder_logits_by_hand(decoder, z, all_unk), rtol=1e-12, atol=1e-12)
    # evaluation: no word dropout; training with word_dropout 0 and dropout 0: the real words
    real = torch.cat([torch.full((2, 1), 4), x[:, :5]], 1)
    expected = decoder_logits_by_hand(decoder, z, real)
    assert torch.allclose(decoder.eval()(z, x), expected, rtol=1e-12, atol=1e-12)
    plain = toy_decoder(word_dropout=0.0).train()
    assert torch.allclose(plain(z, x), expected, rtol=1e-12, atol=1e-12)


def test_a_word_is_dropped_with_probability_below_word_dropout_only(float64):
    """Each input word is replaced when its uniform draw u satisfies u < word_dropout; a word
    whose draw equals word_dropout exactly is kept (the boundary of [0, word_dropout))."""
    x = torch.tensor([[0, 1, 2, 3, 8, 7], [3, 8, 0, 7, 5, 5]])
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    draws = torch.rand(2, 6)
    level = float(draws[0, 1])  # the draw of sequence 0's first word (after BOS)
    decoder = toy_decoder(word_dropout=level).train()
    torch.manual_seed(11)
    got = decoder(z, x)
    inputs = torch.cat([torch.full((2, 1), 4), x[:, :5]], 1)
    dropped = draws < level
    dropped[:, 0] = False
    assert not dropped[0, 1] and dropped.any()
    expected = decoder_logits_by_hand(decoder, z, inputs.masked_fill(dropped, 6))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_without_any_dropout_training_draws_no_random_numbers(float64):
    """word_dropout 0 (the default) is off: a training step without dropout leaves torch's
    generator untouched, so what is drawn after it is reproducible."""
    decoder = toy_decoder(word_dropout=0.0).train()
    x, z = torch.tensor([[0, 1, 7, 5, 5, 5]]), torch.zeros(1, 3)
    torch.manual_seed(5)
    decoder(z, x)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_greedy_generation_follows_the_teacher_forced_argmax(float64):
    """generate carries each layer's state from token to token: every greedy token is the
    most probable one (BOS excluded) under the teacher-forced logits of the tokens before it."""
    decoder = toy_decoder(num_layers=2, init_scale=1.0).eval()
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    out = decoder.generate(z, greedy=True, max_length=6)
    for i in range(5):
        row = out[i]
        length = int((row != 5).sum())
        inputs = torch.cat([torch.tensor([4]), row[: length - 1]]).unsqueeze(0)
        logits = decoder_logits_by_hand(decoder, z[i : i + 1], inputs)[0]
        logits[:, 4] = -math.inf
        assert torch.equal(logits.argmax(-1), row[:length])


def test_lstm_decoder_forward_needs_x():
    with pytest.raises(
        ValueError,
        match=r"^the lstm decoder reads x \(teacher forcing\); use sample\(\) to generate$",
    ):
        toy_decoder()(torch.zeros(1, 3))


def test_sampling_draws_from_the_distribution_not_the_mode():
    decoder = toy_decoder(init_scale=0.05).eval()  # nearly uniform next-token distributions
    z = torch.zeros(40, 3)
    torch.manual_seed(0)
    drawn = decoder.sample(z, None)
    assert drawn.shape == (40, 6)
    assert len({tuple(row.tolist()) for row in drawn}) > 10
    greedy = decoder.generate(z, greedy=True)
    assert len({tuple(row.tolist()) for row in greedy}) == 1


@pytest.mark.parametrize(
    "options,message",
    [
        ({"embedding_dim": 0}, "lstm decoder: embedding_dim must be a positive integer, found 0"),
        ({"embedding_dim": True}, "embedding_dim must be a positive integer, found True"),
        ({"hidden_dim": 2.0}, "hidden_dim must be a positive integer, found 2.0"),
        ({"num_layers": 0}, "num_layers must be a positive integer, found 0"),
        ({"dropout": 1.0}, r"lstm decoder: dropout must lie in \[0, 1\), found 1.0"),
        ({"dropout": -0.1}, r"dropout must lie in \[0, 1\), found -0.1"),
        ({"word_dropout": 1}, r"lstm decoder: word_dropout must lie in \[0, 1\), found 1"),
        ({"word_dropout": -0.5}, r"word_dropout must lie in \[0, 1\)"),
        ({"bos_index": V}, r"lstm decoder: bos_index must lie in \[0, 9\), found 9"),
        ({"eos_index": -1}, r"eos_index must lie in \[0, 9\), found -1"),
        ({"pad_index": 9}, r"pad_index must lie in \[0, 9\)"),
        ({"unk_index": 10}, r"unk_index must lie in \[0, 9\)"),
    ],
)
def test_lstm_decoder_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        LSTMDecoder(3, (6, V), **options)


def test_lstm_decoder_accepts_the_limits_of_its_options():
    decoder = LSTMDecoder(
        1,
        (1, 2),
        embedding_dim=1,
        hidden_dim=1,
        num_layers=1,
        dropout=0.0,
        word_dropout=0.0,
        bos_index=1,
        eos_index=1,
        pad_index=0,
        unk_index=1,
    )
    assert decoder.dropout.p == 0.0
    decoder = LSTMDecoder(
        1, (1, 3), dropout=0.99, word_dropout=0.99, bos_index=2, eos_index=2, unk_index=2
    )
    assert decoder.dropout.p == 0.99 and decoder.word_dropout == 0.99 and decoder.bos_index == 2


@pytest.mark.parametrize("shape", [(6,), (6, V, 2)])
def test_lstm_decoder_needs_sequence_parameters(shape):
    with pytest.raises(
        ConfigError,
        match=r"the lstm decoder needs sequences of tokens \(a categorical likelihood over data "
        rf"of shape \(N, T\)\); found likelihood parameters of shape \({shape[0]},",
    ):
        LSTMDecoder(3, shape)


# ----------------------------------------------------------------------------- encoder
def test_lstm_encoder_defaults_are_documented():
    encoder = LSTMEncoder((7,), 3, num_categories=10)
    assert encoder.data_shape == (7,) and encoder.latent_dim == 3
    assert encoder.discrete_inputs is True and encoder.pad_index == 0
    assert tuple(encoder.embedding.weight.shape) == (10, 256)
    lstm = encoder.lstm
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.batch_first) == (
        256,
        256,
        1,
        True,
    )
    assert tuple(encoder.head.weight.shape) == (6, 256)
    values = torch.cat([p.detach().flatten() for p in encoder.parameters()])
    assert values.abs().max() <= 0.1 and values.max() > 0.099 and values.min() < -0.099


def test_lstm_encoder_init_scale_and_sizes():
    encoder = LSTMEncoder(
        (7,), 2, num_categories=5, embedding_dim=3, hidden_dim=4, num_layers=2, init_scale=0.4
    )
    assert tuple(encoder.embedding.weight.shape) == (5, 3)
    assert (encoder.lstm.input_size, encoder.lstm.hidden_size, encoder.lstm.num_layers) == (3, 4, 2)
    assert tuple(encoder.head.weight.shape) == (4, 4)
    values = torch.cat([p.detach().flatten() for p in encoder.parameters()])
    assert values.abs().max() <= 0.4 and values.max() > 0.3 and values.min() < -0.3


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_encoder_reads_each_sequence_up_to_its_last_real_token(float64, num_layers):
    torch.manual_seed(0)
    encoder = LSTMEncoder(
        (6,),
        3,
        num_categories=7,
        embedding_dim=3,
        hidden_dim=4,
        num_layers=num_layers,
        init_scale=0.8,
        pad_index=5,
    )
    x = torch.tensor(
        [[0, 1, 2, 6, 5, 5], [3, 6, 5, 5, 5, 5], [4, 4, 0, 1, 2, 6], [6, 5, 5, 5, 5, 5]]
    )
    loc, log_var = encoder(x)
    assert loc.shape == (4, 3) and log_var.shape == (4, 3)
    w, b = encoder.head.weight, encoder.head.bias  # rows 0–2: μ, rows 3–5: log σ²
    for i, row in enumerate(x):
        tokens = row[row != 5]
        h = [torch.zeros(4) for _ in range(num_layers)]
        c = [torch.zeros(4) for _ in range(num_layers)]
        for token in tokens:
            below = encoder.embedding.weight[token]
            for layer in range(num_layers):
                h[layer], c[layer] = cell(below, h[layer], c[layer], encoder.lstm, layer)
                below = h[layer]
        assert torch.allclose(loc[i], w[:3] @ h[-1] + b[:3], rtol=1e-12, atol=1e-12)
        assert torch.allclose(log_var[i], w[3:] @ h[-1] + b[3:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "data_shape,categories,message",
    [
        (
            (2, 3),
            5,
            r"the lstm encoder reads sequences of shape \(N, T\); found datapoints of shape \(2, 3\)",
        ),
        (
            (7,),
            None,
            r"lstm encoder: expected the option num_categories >= 2 \(the vocabulary size, "
            r"e\.g\. --encoder-option num_categories=10002\), found None",
        ),
        ((7,), 1, "num_categories >= 2 .*found 1"),
    ],
)
def test_lstm_encoder_checks_its_shape_and_vocabulary(data_shape, categories, message):
    with pytest.raises(ConfigError, match=message):
        LSTMEncoder(data_shape, 2, num_categories=categories)


def test_lstm_encoder_accepts_a_vocabulary_of_two():
    encoder = LSTMEncoder((3,), 2, num_categories=2, embedding_dim=2, hidden_dim=2)
    loc, _ = encoder(torch.tensor([[1, 1, 0]]))
    assert loc.shape == (1, 2)


# ----------------------------------------------------------------------------- homotopy
def test_homotopy_is_the_documented_line():
    # float64 codes under the float32 default dtype: t is computed in the codes' precision
    z_a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    z_b = torch.tensor([3.0, 4.0, -1.5], dtype=torch.float64)
    codes = homotopy(z_a, z_b)
    assert codes.shape == (7, 3) and codes.dtype == torch.float64  # default 7 steps
    for k in range(7):
        t = k / 6
        expected = torch.tensor(
            [(1 - t) * a + t * b for a, b in zip(z_a.tolist(), z_b.tolist())], dtype=torch.float64
        )
        assert torch.allclose(codes[k], expected, rtol=0, atol=1e-15)
    assert torch.equal(codes[0], z_a) and torch.equal(codes[-1], z_b)
    assert torch.equal(homotopy(z_a, z_b, 2), torch.stack([z_a, z_b]))
    assert torch.equal(homotopy(z_a, z_b, 1), z_a.unsqueeze(0))
    assert torch.allclose(homotopy(z_a, z_b, 3)[1], (z_a + z_b) / 2, rtol=0, atol=1e-15)


def test_homotopy_keeps_the_dtype_of_the_codes():
    z_a, z_b = torch.zeros(2), torch.ones(2)
    codes = homotopy(z_a, z_b, 5)
    assert codes.dtype == torch.float32
    assert torch.equal(codes[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def test_homotopy_stays_on_the_device_of_the_codes():
    z_a = torch.zeros(3, device="meta")
    codes = homotopy(z_a, torch.ones(3, device="meta"), 4)
    assert codes.device.type == "meta" and codes.shape == (4, 3)
