"""What a text model's codes say, in words: reconstructions, samples from the prior and
homotopies (Bowman et al. 2016, §5), for decoders that generate token by token
(:meth:`~pyro_skipvae.models.LSTMDecoder.generate`)."""

import torch


def homotopy(z_a: torch.Tensor, z_b: torch.Tensor, num_steps: int = 7) -> torch.Tensor:
    """Codes on the line z(t) = (1 − t) z_a + t z_b at ``num_steps`` evenly spaced t in [0, 1],
    shape ``(num_steps, D)``."""
    t = torch.linspace(0, 1, num_steps, dtype=z_a.dtype, device=z_a.device).unsqueeze(-1)
    return (1 - t) * z_a + t * z_b


@torch.no_grad()
def text_report(
    decoder,
    data,
    codes,
    prior_codes,
    vocabulary,
    *,
    num_reconstructions=10,
    num_homotopies=3,
    homotopy_steps=7,
    seed=0,
) -> str:
    """A Markdown text of decoded sentences; run the decoder in ``eval()`` mode.

    * **reconstructions**: the first ``num_reconstructions`` sequences of ``data`` beside the
      greedy decoding and one sampled decoding of their codes ``codes`` (e.g. posterior means);
    * **samples from the prior**: ``prior_codes`` (z ~ p(z)) decoded greedily and by sampling;
    * **homotopies**: greedy decodings along the line between the codes of sequences 2k and
      2k + 1 of ``data``, k < ``num_homotopies`` (:func:`homotopy`).

    Sampled tokens are drawn from torch's global generator, seeded with ``seed`` here.

    :param decoder: has ``generate(z, greedy=...)`` returning token ids ``(n, T)``.
    :param vocabulary: has ``decode(ids) -> str`` (:class:`~pyro_skipvae.data.text.Vocabulary`).
    """
    torch.manual_seed(seed)
    n = min(num_reconstructions, data.shape[0])
    greedy = decoder.generate(codes[:n], greedy=True)
    sampled = decoder.generate(codes[:n])
    lines = [f"## Reconstructions: {n} sequences, decoded from their codes", ""]
    for i in range(n):
        lines += [
            f"{i + 1}. data:    {vocabulary.decode(data[i])}",
            f"   greedy:  {vocabulary.decode(greedy[i])}",
            f"   sampled: {vocabulary.decode(sampled[i])}",
            "",
        ]
    lines += [f"## Samples from the prior: {prior_codes.shape[0]} codes z ~ p(z)", ""]
    greedy = decoder.generate(prior_codes, greedy=True)
    sampled = decoder.generate(prior_codes)
    for i in range(prior_codes.shape[0]):
        lines += [
            f"{i + 1}. greedy:  {vocabulary.decode(greedy[i])}",
            f"   sampled: {vocabulary.decode(sampled[i])}",
            "",
        ]
    pairs = min(num_homotopies, data.shape[0] // 2)
    lines += [
        f"## Homotopies: greedy decodings of z = (1 − t) z_a + t z_b, t = 0 … 1 in "
        f"{homotopy_steps} steps",
        "",
    ]
    for k in range(pairs):
        a, b = 2 * k, 2 * k + 1
        decoded = decoder.generate(homotopy(codes[a], codes[b], homotopy_steps), greedy=True)
        lines += [f"{k + 1}. from: {vocabulary.decode(data[a])}"]
        lines += [
            f"   t = {t:.2f}: {vocabulary.decode(row)}"
            for t, row in zip(torch.linspace(0, 1, homotopy_steps).tolist(), decoded)
        ]
        lines += [f"   to:   {vocabulary.decode(data[b])}", ""]
    return "\n".join(lines)
