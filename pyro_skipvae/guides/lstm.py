"""LSTM encoder of token sequences."""

import torch
from torch import nn

from ..data.text import PAD_INDEX
from ..errors import ConfigError
from .encoders import ENCODERS, Encoder


@ENCODERS.register("lstm")
class LSTMEncoder(Encoder):
    r"""h_t = LSTM(E[x_t], h_{t−1}) over a padded sequence's tokens; from the state at its last
    real token (the end-of-sentence token), μ = A h + a and log σ² = B h + b.

    As the authors' text encoder (Kim et al. 2018 ``models_text.py``: one LSTM, the last
    state, two linear heads) except that it does not read the BOS symbol, which is the same
    for every sentence and says nothing about x. The authors' minibatches hold sentences of
    one length, so their last state is the sentence's; here each sequence's state is read at
    its own last token, which padding cannot change because the LSTM is causal, so a padded
    minibatch encodes each sentence exactly as it would be encoded alone. Parameters start
    uniform in [−``init_scale``, ``init_scale``] as in the authors' scripts.

    :param int num_categories: vocabulary size V (required).
    :param int embedding_dim: word embedding size (default 256; the papers: 512).
    :param int hidden_dim: LSTM state size (default 256; the papers: 1024).
    :param int num_layers: LSTM layers (default 1).
    :param float init_scale: half-width of the uniform initialisation (default 0.1).
    :param int pad_index: padding id (default 0).
    """

    discrete_inputs = True

    def __init__(
        self,
        data_shape,
        latent_dim,
        *,
        num_categories=None,
        embedding_dim=256,
        hidden_dim=256,
        num_layers=1,
        init_scale=0.1,
        pad_index=PAD_INDEX,
    ):
        super().__init__(data_shape, latent_dim)
        if len(self.data_shape) != 1:
            raise ConfigError(
                f"the lstm encoder reads sequences of shape (N, T); found datapoints of shape "
                f"{self.data_shape}"
            )
        if num_categories is None or num_categories < 2:
            raise ConfigError(
                "lstm encoder: expected the option num_categories >= 2 (the vocabulary size, "
                f"e.g. --encoder-option num_categories=10002), found {num_categories}"
            )
        self.pad_index = pad_index
        self.embedding = nn.Embedding(num_categories, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)
        for p in self.parameters():
            nn.init.uniform_(p, -init_scale, init_scale)

    def forward(self, x):
        lengths = (x != self.pad_index).sum(-1)
        states, _ = self.lstm(self.embedding(x[:, : int(lengths.max())]))
        last = states[torch.arange(x.shape[0], device=x.device), lengths - 1]
        loc, log_var = self.head(last).chunk(2, dim=-1)
        return loc, log_var
