r"""LSTM decoder of token sequences, with or without generative skip connections."""

import math

import torch
from torch import nn

from ...data.text import BOS_INDEX, EOS_INDEX, PAD_INDEX, UNK_INDEX
from ...errors import ConfigError
from .base import Decoder


class LSTMDecoder(Decoder):
    r"""Autoregressive LSTM language model conditioned on z (Bowman et al. 2016), with z in
    every layer when ``skip`` (Dieng et al. 2019, §3 and their text experiments).

    A stack of L single-layer LSTMs reads the embeddings e_t = E[x_{t−1}] (x_0 = BOS) of the
    tokens before position t and gives logits η_t over the vocabulary:

    .. math::

        h^1_t &= \mathrm{LSTM}_1([e_t; z],\ h^1_{t-1}) \\
        h^l_t &= \mathrm{LSTM}_l([h^{l-1}_t; z],\ h^l_{t-1})
            \quad\text{(skip; without skip } \mathrm{LSTM}_l(h^{l-1}_t, h^l_{t-1})),
            \quad l = 2, …, L \\
        \eta_t &= W [h^L_t; z] + b \quad\text{(skip; without skip } W h^L_t + b) \\
        h^L_0 &= A z + a, \quad c^L_0 = 0, \quad h^l_0 = c^l_0 = 0 \ (l < L).

    Without skip this is the authors' text decoder (Kim et al. 2018 ``models_text.py``):
    z concatenated to the word embedding at every step and the initial hidden state from a
    linear map of z. With skip, z also enters the input of every LSTM layer above the first
    and the input of the softmax layer (Dieng et al.'s ``models_text_skip.py`` does the
    latter with one layer). Where we differ, and why:

    * The authors' multi-layer decoder is one ``nn.LSTM``, which cannot take z between
      layers; this is a stack of single-layer LSTMs (identical for one layer), and like theirs
      only the top layer's initial state comes from z.
    * The padding and BOS logits are −∞ in every softmax, scored and sampled: neither is
      ever a target (padding only ends a sequence, which the likelihood checks; BOS is only
      the first input), so each p(x_t | x_<t, z) puts all its mass on the other tokens,
      p(x | z) is a proper distribution over sequences of those, and :meth:`generate` samples
      from the same distribution whose NLL and perplexity are reported. The authors'
      decoders (``models_text.py``, ``models_text_skip.py``) keep BOS (and padding) in
      their softmax, which wastes a little mass on tokens that never occur: their
      perplexities are those of a slightly different distribution (on PTB the difference is
      about 0.006%, ``benchmarks/results/ptb_lstm.md``).
    * Parameters start uniform in [−``init_scale``, ``init_scale``] as in the authors'
      scripts (0.1); dropout acts on the embeddings and on every layer's output, as theirs
      on the embeddings and the LSTM output; word dropout (Bowman et al. 2016, §3) is an
      extra option, off by default.

    Only the positions up to the longest real sequence in ``x`` are computed (padding is a
    suffix), so the output is ``(*batch, L, V)`` with L ≤ T; the categorical likelihood
    scores padded positions as padding (:class:`~pyro_skipvae.models.likelihoods.PaddedSequence`).
    Padding never changes the logits of real positions (the LSTM is causal).

    :param int latent_dim: size of z.
    :param tuple output_shape: ``(T, V)``: longest sequence (default generation length) and
        vocabulary size.
    :param bool skip: feed z into every layer (default True).
    :param int embedding_dim: word embedding size (default 256; the papers: 512).
    :param int hidden_dim: LSTM state size (default 256; the papers: 1024).
    :param int num_layers: stacked LSTM layers (default 1, as in the papers).
    :param float dropout: dropout on embeddings and layer outputs during training (default
        0.5, as in the papers; inactive in ``eval()`` mode).
    :param float word_dropout: probability of replacing each input word by ``<unk>`` during
        training (default 0).
    :param float init_scale: half-width of the uniform initialisation (default 0.1).
    :param int bos_index: id prepended as the first input (default 2).
    :param int eos_index: id that ends a generated sequence (default 3).
    :param int pad_index: padding id (default 0).
    :param int unk_index: id replacing dropped words (default 1).
    """

    autoregressive = True

    def __init__(
        self,
        latent_dim,
        output_shape,
        *,
        skip=True,
        embedding_dim=256,
        hidden_dim=256,
        num_layers=1,
        dropout=0.5,
        word_dropout=0.0,
        init_scale=0.1,
        bos_index=BOS_INDEX,
        eos_index=EOS_INDEX,
        pad_index=PAD_INDEX,
        unk_index=UNK_INDEX,
    ):
        super().__init__(latent_dim, output_shape, skip=skip)
        if len(self.output_shape) != 2:
            raise ConfigError(
                "the lstm decoder needs sequences of tokens (a categorical likelihood over data "
                f"of shape (N, T)); found likelihood parameters of shape {self.output_shape}"
            )
        for name, value in (
            ("embedding_dim", embedding_dim),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"lstm decoder: {name} must be a positive integer, found {value!r}"
                )
        for name, value in (("dropout", dropout), ("word_dropout", word_dropout)):
            if not 0 <= value < 1:
                raise ConfigError(f"lstm decoder: {name} must lie in [0, 1), found {value!r}")
        self.max_length, vocab_size = self.output_shape
        for name, value in (
            ("bos_index", bos_index),
            ("eos_index", eos_index),
            ("pad_index", pad_index),
            ("unk_index", unk_index),
        ):
            if not 0 <= value < vocab_size:
                raise ConfigError(
                    f"lstm decoder: {name} must lie in [0, {vocab_size}), found {value}"
                )
        self.bos_index, self.eos_index = bos_index, eos_index
        self.pad_index, self.unk_index = pad_index, unk_index
        self.word_dropout = word_dropout
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstms = nn.ModuleList(
            nn.LSTM(
                (embedding_dim if layer == 0 else hidden_dim)
                + (latent_dim if layer == 0 or skip else 0),
                hidden_dim,
                batch_first=True,
            )
            for layer in range(num_layers)
        )
        self.init_hidden = nn.Linear(latent_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim + (latent_dim if skip else 0), vocab_size)
        self.dropout = nn.Dropout(dropout)
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)
        never = torch.zeros(vocab_size)
        never[pad_index] = never[bos_index] = -math.inf
        # Added to the output bias: one operation on V numbers rather than on every logit.
        self.register_buffer("never", never, persistent=False)

    def forward(self, z, x=None):
        if x is None:
            raise ValueError("the lstm decoder reads x (teacher forcing); use sample() to generate")
        length = max(int((x != self.pad_index).sum(-1).max()), 1)
        inputs = torch.cat([torch.full_like(x[..., :1], self.bos_index), x[..., : length - 1]], -1)
        if self.training and self.word_dropout > 0:
            dropped = torch.rand(inputs.shape, device=inputs.device) < self.word_dropout
            dropped[..., 0] = False  # BOS stays: it tells the decoder where the sentence starts
            inputs = inputs.masked_fill(dropped, self.unk_index)
        batch = torch.broadcast_shapes(z.shape[:-1], inputs.shape[:-1])
        embedded = self.embedding(inputs).expand(*batch, length, -1)
        z_flat = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        logits, _ = self._run(embedded.reshape(-1, length, embedded.shape[-1]), z_flat, None)
        return logits.reshape(*batch, length, logits.shape[-1])

    def _initial_states(self, z):
        h = self.init_hidden(z).unsqueeze(0)
        return [None] * (len(self.lstms) - 1) + [(h, torch.zeros_like(h))]

    def _run(self, embedded, z, states):
        """Logits ``(M, S, V)`` for embeddings ``(M, S, E)`` of M sequences and their codes
        ``(M, D)``, from ``states`` (one per layer; None: the initial states); returns the
        logits and the layers' final states."""
        states = self._initial_states(z) if states is None else states
        z_steps = z.unsqueeze(-2).expand(-1, embedded.shape[-2], -1)
        h = self.dropout(embedded)
        final = []
        for layer, lstm in enumerate(self.lstms):
            if layer == 0 or self.skip:
                h = torch.cat([h, z_steps], -1)
            h, state = lstm(h, states[layer])
            final.append(state)
            h = self.dropout(h)
        if self.skip:
            h = torch.cat([h, z_steps], -1)
        logits = nn.functional.linear(h, self.output.weight, self.output.bias + self.never)
        return logits, final

    @torch.no_grad()
    def generate(self, z, *, greedy=False, max_length=None):
        """Token sequences decoded from codes ``z`` of shape ``(*batch, latent_dim)``, one
        token at a time carrying the LSTM states: ``(*batch, max_length)`` ids, each sequence
        ending with EOS (unless ``max_length`` is reached first) and padded after it.

        :param bool greedy: take the most probable token at each step (for reconstructions
            and homotopies) instead of sampling from p(x_t | x_<t, z).
        :param int max_length: longest sequence generated (default: the data's width T).
        """
        max_length = self.max_length if max_length is None else max_length
        z_flat = z.reshape(-1, z.shape[-1])
        count = z_flat.shape[0]
        out = torch.full((count, max_length), self.pad_index, dtype=torch.long, device=z.device)
        token = torch.full((count, 1), self.bos_index, dtype=torch.long, device=z.device)
        done = torch.zeros(count, dtype=torch.bool, device=z.device)
        states = None
        for t in range(max_length):
            logits, states = self._run(self.embedding(token), z_flat, states)
            logits = logits[:, -1]  # BOS and padding are already −∞ (self.never)
            if greedy:
                step = logits.argmax(-1)
            else:
                step = torch.distributions.Categorical(logits=logits).sample()
            step = step.masked_fill(done, self.pad_index)
            out[:, t] = step
            done = done | (step == self.eos_index)
            if done.all():
                break
            token = step.unsqueeze(-1)
        return out.reshape(*z.shape[:-1], max_length)

    def sample(self, z, likelihood=None):
        """x ~ p(x | z), token by token (see :meth:`generate`); the likelihood is the
        categorical one this decoder parametrises, so it is not consulted."""
        return self.generate(z, greedy=False)
