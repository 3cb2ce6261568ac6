"""Text: corpora, masking, the LSTM encoder and decoder, perplexity and resume, on tiny real
slices of the Penn Treebank (synthetic sequences only where a hand-computed answer is needed,
and labelled so)."""

import gzip
import json
import math

import markupsafe
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_skipvae import ConfigError, DataError, SkipVAE
from pyro_skipvae.data import load_dataset
from pyro_skipvae.data.text import (
    BOS_INDEX,
    EOS_INDEX,
    PAD_INDEX,
    UNK_INDEX,
    Vocabulary,
    bucket_batches,
    read_lines,
    sequence_lengths,
    trim_collate,
)
from pyro_skipvae.infer import SEMI_AMORTIZED_MODES, SemiAmortizedSVI
from pyro_skipvae.infer.optim import Optimizer
from pyro_skipvae.models.likelihoods import CategoricalLikelihood, PaddedSequence
from pyro_skipvae.sites import LATENT_SITE, OBSERVED_SITE

SIZES = {"embedding_dim": 8, "hidden_dim": 8}


@pytest.fixture(scope="session")
def ptb(data_dir):
    return load_dataset("ptb", data_dir=data_dir)


def text_vae(splits, *, skip=True, latent_dim=3, num_layers=1, seed=0, **decoder_options):
    options = splits.vocabulary.model_options()
    options["encoder_options"].update(SIZES)
    return SkipVAE(
        splits.data_shape,
        latent_dim=latent_dim,
        skip=skip,
        decoder_options={**SIZES, "num_layers": num_layers, **decoder_options},
        seed=seed,
        **options,
    )


def log_likelihood(vae, x, z):
    """log p(x | z) per datapoint, read from the model's site "x" with z conditioned."""
    trace = poutine.trace(poutine.condition(vae.model, data={LATENT_SITE: z})).get_trace(x)
    site = trace.nodes[OBSERVED_SITE]
    return site["fn"].log_prob(site["value"])


# ---------------------------------------------------------------------------- corpora
def test_ptb_is_read_as_the_corpus_files_are(ptb, data_dir):
    lines = {
        s: read_lines(data_dir / "ptb" / f"ptb.{s}.txt.gz") for s in ("train", "valid", "test")
    }
    assert [t.shape[0] for t in (ptb.train, ptb.val, ptb.test)] == [42068, 3370, 3761]
    # 9,999 distinct training words (one of them PTB's own <unk>) + pad, bos, eos
    assert len(ptb.vocabulary) == 10002 and ptb.vocabulary.words[UNK_INDEX] == "<unk>"
    words = sum(len(line.split()) for line in lines["train"])
    assert words == 887521  # SOURCES.md's whitespace token count
    # tokens = words + one EOS per sentence; BOS is not data
    assert int(sequence_lengths(ptb.train).sum()) == words + 42068
    assert ptb.data_shape == (83,)  # longest sentence: 82 words, plus EOS
    for split, tensor in (("train", ptb.train), ("valid", ptb.val), ("test", ptb.test)):
        for n in (0, 7, len(lines[split]) - 1):
            row = tensor[n]
            length = int(sequence_lengths(row))
            assert ptb.vocabulary.decode(row) == " ".join(lines[split][n].split())
            assert row[length - 1] == EOS_INDEX and (row[length:] == PAD_INDEX).all()
    assert (ptb.train != BOS_INDEX).all()


def test_max_length_drops_longer_sentences_from_every_split(data_dir):
    splits = load_dataset("ptb", data_dir=data_dir, max_length=10)
    assert splits.data_shape == (11,)
    for split, tensor in (("train", splits.train), ("valid", splits.val), ("test", splits.test)):
        lines = read_lines(data_dir / "ptb" / f"ptb.{split}.txt.gz")
        kept = [line for line in lines if 0 < len(line.split()) <= 10]
        assert tensor.shape[0] == len(kept)
        assert splits.vocabulary.decode(tensor[-1]) == " ".join(kept[-1].split())
    with pytest.raises(ConfigError, match="max_length applies to the text data sets"):
        load_dataset("mnist", data_dir=data_dir, max_length=10)
    with pytest.raises(ConfigError, match="positive integer"):
        load_dataset("ptb", data_dir=data_dir, max_length=0)


def test_yahoo_names_the_missing_training_file(data_dir):
    with pytest.raises(DataError, match=r"train split is missing: expected .*yahoo\.train\.txt"):
        load_dataset("yahoo", data_dir=data_dir)


def test_yahoo_full_layout_uses_the_dictionary(data_dir, tmp_path):
    """The real dictionary, validation and test files, plus a three-line synthetic training
    file (labelled: it only exercises the reader, nothing is trained on it)."""
    folder = tmp_path / "yahoo"
    folder.mkdir()
    for name in ("yahoo.dict.gz", "yahoo.valid.txt.gz", "yahoo.test.txt.gz"):
        (folder / name).symlink_to(data_dir / "yahoo" / name)
    (folder / "yahoo.train.txt").write_text("the cat\nzzzz-not-a-word .\n\n")
    splits = load_dataset("yahoo", data_dir=tmp_path)
    vocabulary = Vocabulary.from_file(data_dir / "yahoo" / "yahoo.dict.gz")
    assert splits.vocabulary == vocabulary and len(vocabulary) == 20001
    the, dot = vocabulary.index["the"], vocabulary.index["."]
    expected = torch.tensor(
        [[the, vocabulary.index["cat"], EOS_INDEX], [UNK_INDEX, dot, EOS_INDEX]]
    )
    assert torch.equal(splits.train[:, :3], expected) and (splits.train[:, 3:] == 0).all()
    assert splits.val.shape[0] == splits.test.shape[0] == 10000  # the empty line was dropped
    with gzip.open(data_dir / "yahoo" / "yahoo.valid.txt.gz", "rt") as f:
        first = f.readline().split()
    assert vocabulary.decode(splits.val[0]) == " ".join(first)


def test_vocabulary_checks_its_special_tokens(tmp_path):
    with pytest.raises(DataError, match="special tokens"):
        Vocabulary(("a", "b", "c", "d"))
    path = tmp_path / "bad.dict"
    path.write_text("<pad> 0\n<unk> 1\n<s> 2\n</s> 5\n")
    with pytest.raises(DataError, match="ids 0 … 3"):
        Vocabulary.from_file(path)


# ---------------------------------------------------------------------------- batching
def test_buckets_cover_every_sentence_once_with_little_padding(ptb):
    lengths = sequence_lengths(ptb.train)
    batches = bucket_batches(lengths, 32)
    epoch = batches(torch.Generator().manual_seed(0))
    assert len(epoch) == math.ceil(42068 / 32)
    assert sorted(torch.cat(epoch).tolist()) == list(range(42068))
    assert sum(len(b) != 32 for b in epoch) == 1
    # neighbours in length order: ordered by their shortest sentence, no two batches overlap
    ranges = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in epoch)
    assert all(high <= low for (_, high), (low, _) in zip(ranges, ranges[1:]))
    padded = sum(len(b) * int(lengths[b].max()) for b in epoch)
    assert 1 - int(lengths.sum()) / padded < 0.002
    again = batches(torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(epoch, again))
    other = batches(torch.Generator().manual_seed(1))
    assert not all(torch.equal(a, b) for a, b in zip(epoch, other))
    x = trim_collate(lengths)(ptb.train, epoch[0])
    assert x.shape == (32, int(lengths[epoch[0]].max()))
    assert torch.equal(x, ptb.train[epoch[0]][:, : x.shape[1]])


# ---------------------------------------------------------------------------- masking
def test_padding_never_counts_in_the_likelihood(float64):
    """Hand-computed: log p(x|z) is the sum of log-softmax over the real tokens only."""
    likelihood = CategoricalLikelihood((4,), num_categories=5, pad_index=0)
    logits = torch.randn(2, 4, 5)
    x = torch.tensor([[3, 1, 0, 0], [4, 2, 2, 3]])
    log_softmax = logits.log_softmax(-1)
    expected = torch.stack(
        [
            log_softmax[0, 0, 3] + log_softmax[0, 1, 1],
            log_softmax[1, [0, 1, 2, 3], [4, 2, 2, 3]].sum(),
        ]
    )
    assert torch.allclose(likelihood(logits, x).log_prob(x), expected)
    # padded positions' logits are irrelevant
    changed = logits.clone()
    changed[0, 2:] = 100.0
    assert torch.allclose(likelihood(changed, x).log_prob(x), expected)
    # parameters for the first 2 positions only: the rest must be padding
    short = likelihood(logits[:1, :2], x[:1])
    assert isinstance(short, PaddedSequence) and short.event_shape == (4,)
    assert torch.allclose(short.log_prob(x[:1]), expected[:1])
    assert short.log_prob(torch.tensor([[3, 1, 2, 0]])) == -math.inf
    assert likelihood.num_tokens(x).tolist() == [2, 4]


@pytest.mark.parametrize(
    "row, message", [([0, 0, 0, 0], "holds no token"), ([3, 0, 2, 0], "a token after padding")]
)
def test_bad_padding_is_a_data_error(row, message):
    likelihood = CategoricalLikelihood((4,), num_categories=5, pad_index=0)
    with pytest.raises(DataError, match=message):
        likelihood.validate(torch.tensor([[1, 2, 0, 0], row]))


@pytest.mark.parametrize("skip", [True, False])
def test_a_padded_batch_scores_each_sentence_as_alone(ptb, float64, skip):
    """Exact equality (float64): log p(x|z), the encoder's output and the ELBO of each
    sentence are the same in a padded minibatch of the full width as on its own."""
    vae = text_vae(ptb, skip=skip, num_layers=2, latent_dim=4)
    vae.model.eval(), vae.guide.eval()
    x = ptb.val[:8]
    lengths = sequence_lengths(x)
    assert len(set(lengths.tolist())) > 4
    z = torch.randn(8, 4)
    batch = log_likelihood(vae, x, z)
    loc, log_var = vae.guide.local_params(x)
    for n in range(8):
        alone = x[n : n + 1, : int(lengths[n])]
        assert torch.allclose(batch[n], log_likelihood(vae, alone, z[n : n + 1])[0], atol=1e-10)
        loc_n, log_var_n = vae.guide.local_params(alone)
        assert torch.allclose(loc[n], loc_n[0], atol=1e-12)
        assert torch.allclose(log_var[n], log_var_n[0], atol=1e-12)
    # importance samples (a leading particle dimension) score the same as one z at a time
    zs = torch.randn(3, 8, 4)
    with pyro.plate("particles", 3, dim=-2):
        particles = log_likelihood(vae, x, zs)
    for k in range(3):
        assert torch.allclose(particles[k], log_likelihood(vae, x, zs[k]), atol=1e-10)


# ---------------------------------------------------------------------------- the decoder
@pytest.mark.parametrize("skip", [True, False])
def test_skip_wiring_by_gradients(ptb, skip):
    """z reaches layer 2's input and the softmax input only with skip: with the paths through
    layer 1's input and the initial state cut, the logits still depend on z iff skip."""
    decoder = text_vae(ptb, skip=skip, num_layers=2, latent_dim=3, dropout=0.0).model.decoder
    x = ptb.train[:4]
    embedding, latent = 8, 3
    assert decoder.lstms[0].weight_ih_l0.shape[1] == embedding + latent
    assert decoder.lstms[1].weight_ih_l0.shape[1] == 8 + (latent if skip else 0)
    assert decoder.output.weight.shape[1] == 8 + (latent if skip else 0)
    z = torch.randn(4, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(decoder(z, x).log_softmax(-1)[..., 4:].sum(), z)
    assert grad.abs().sum() > 0
    with torch.no_grad():
        decoder.lstms[0].weight_ih_l0[:, embedding:] = 0
        decoder.init_hidden.weight.zero_()
    (grad,) = torch.autograd.grad(decoder(z, x).log_softmax(-1)[..., 4:].sum(), z)
    assert (grad.abs().sum() > 0) == skip
    if skip:  # each skip path on its own carries z
        for weight in (decoder.lstms[1].weight_ih_l0[:, 8:], decoder.output.weight[:, 8:]):
            saved = weight.detach().clone()
            with torch.no_grad():
                weight.zero_()
            (grad,) = torch.autograd.grad(decoder(z, x).log_softmax(-1)[..., 4:].sum(), z)
            assert grad.abs().sum() > 0
            with torch.no_grad():
                weight.copy_(saved)


def test_generation_carries_the_state_as_teacher_forcing_does(ptb, float64):
    """Greedy decoding one token at a time picks, at every position, the argmax of the
    teacher-forced logits of its own output: the carried LSTM state is the full forward's."""
    vae = text_vae(ptb, num_layers=2, latent_dim=4)
    decoder = vae.model.decoder.eval()
    z = torch.randn(5, 4)
    y = decoder.generate(z, greedy=True, max_length=12)
    assert y.shape == (5, 12)
    logits = decoder(z, y)
    for n in range(5):
        length = int(sequence_lengths(y[n]))
        assert torch.equal(logits[n, :length].argmax(-1), y[n, :length])
        ended = (y[n] == EOS_INDEX).nonzero()
        if len(ended):  # EOS ends the sequence, padding follows
            assert length == int(ended[0]) + 1 and (y[n, length:] == PAD_INDEX).all()
    assert not (y == BOS_INDEX).any()
    assert torch.equal(y, decoder.generate(z, greedy=True, max_length=12))  # greedy: no noise
    with torch.no_grad():  # a decoder sure of EOS stops at once
        decoder.output.bias[EOS_INDEX] = 1e4
    assert torch.equal(decoder.sample(z)[:, :2], torch.tensor([[EOS_INDEX, PAD_INDEX]] * 5))
    assert vae.sample(3).shape == (3, 83)


def test_dropout_is_off_at_evaluation(ptb):
    vae = text_vae(ptb, dropout=0.5, word_dropout=0.3)
    x, z = ptb.train[:6], torch.randn(6, 3)
    decoder = vae.model.decoder
    assert not torch.equal(decoder(z, x), decoder(z, x))  # training: random
    decoder.eval()
    assert torch.equal(decoder(z, x), decoder(z, x))


def test_text_options_are_checked(ptb):
    with pytest.raises(ConfigError, match="num_categories"):
        SkipVAE(
            ptb.data_shape,
            decoder="lstm",
            encoder="lstm",
            likelihood="categorical",
            likelihood_options={"num_categories": 10002, "pad_index": 0},
        )
    with pytest.raises(ConfigError, match="lstm decoder needs sequences"):
        SkipVAE((1, 28, 28), decoder="lstm")
    with pytest.raises(ConfigError, match="dropout must lie"):
        text_vae(ptb, dropout=1.0)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("mode", SEMI_AMORTIZED_MODES)
def test_every_semi_amortized_mode_steps_on_text(ptb, mode):
    """Each mode takes a finite step; the encoder learns in every mode but svi (end-to-end:
    through the refinement's double backward across the LSTM), the decoder in all."""
    vae = text_vae(ptb)
    x = trim_collate(sequence_lengths(ptb.train))(ptb.train, torch.arange(16))
    optimizer = Optimizer(vae.parameters(), name="sgd", learning_rate=1.0, clip_norm=5.0)
    inference = SemiAmortizedSVI(
        vae.model, vae.guide, optimizer, Trace_ELBO(), mode=mode, num_refine_steps=2
    )
    encoder = [p.detach().clone() for p in vae.guide.parameters()]
    decoder = [p.detach().clone() for p in vae.model.parameters()]
    assert math.isfinite(inference.step(x, size=1000))
    moved = [not torch.equal(a, p) for a, p in zip(encoder, vae.guide.parameters())]
    assert all(moved) if mode != "svi" else not any(moved)
    assert all(not torch.equal(a, p) for a, p in zip(decoder, vae.model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_on_ptb_writes_val_ppl_and_resumes_exactly(ptb, tmp_path, optimizer):
    options = dict(
        batch_size=16,
        num_epochs=2,
        optimizer=optimizer,
        learning_rate=1.0 if optimizer == "sgd" else 1e-2,
        clip_norm=5.0,
        kl_warmup_epochs=1,
    )
    train, val = ptb.train[:96], ptb.val[:40]

    def fit(run_dir, **extra):
        vae = text_vae(ptb)
        vae.fit(train, val=val, run_dir=run_dir, **{**options, **extra})
        return vae

    full = fit(tmp_path / "full")
    fit(tmp_path / "part", num_epochs=1)
    resumed = fit(tmp_path / "part", resume=True)
    records = [
        json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    again = [
        json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in again
    ]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    tokens = int(sequence_lengths(val).sum())
    for r in records:
        assert r["val_ppl"] == pytest.approx(math.exp(-r["val_elbo"] * 40 / tokens), rel=1e-12)
    assert records[-1]["val_ppl"] < 10002  # better than uniform over the vocabulary


# ---------------------------------------------------------------------------- CLI, diagnose
TINY = [
    "--decoder-option",
    "embedding_dim=8",
    "--decoder-option",
    "hidden_dim=8",
    "--encoder-option",
    "embedding_dim=8",
    "--encoder-option",
    "hidden_dim=8",
    "--latent-dim",
    "3",
]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, data_dir):
    """A tiny PTB run through the CLI (made once per module)."""
    out = tmp_path_factory.mktemp("runs") / "ptb"
    result = run_cli(
        "fit", "--dataset", "ptb", "--data-dir", str(data_dir), "--train-size", "64",
        "--val-size", "32", "--num-epochs", "1", "--batch-size", "16", "--optimizer", "sgd",
        "--learning-rate", "1", "--clip-norm", "5", *TINY, "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "perplexity bound" in result.output
    return out


def run_cli(*args):
    from click.testing import CliRunner

    from pyro_skipvae.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_fit_infers_the_text_model(text_run):
    config = json.loads((text_run / "config.json").read_text())
    model = config["model"]
    assert (model["decoder"], model["encoder"], model["likelihood"]) == (
        "lstm",
        "lstm",
        "categorical",
    )
    assert model["likelihood_options"] == {"num_categories": 10002, "pad_index": 0}
    assert model["encoder_options"]["num_categories"] == 10002
    assert model["data_shape"] == [83] and config["train"]["binarize"] == "none"
    record = json.loads((text_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_elbo", "val_kl", "val_ppl"} <= set(record)


def test_cli_diagnose_on_text(text_run, ptb, data_dir):
    import xarray as xr

    out = text_run / "diag.json"
    result = run_cli(
        "diagnose", text_run, "--data-dir", data_dir, "--eval-size", "40", "--num-samples", "20",
        "--embedding", "pca", "--out", out, "--quiet", "--report",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())
    test = ptb.test[:40]
    tokens = int(sequence_lengths(test).sum())
    assert m["num_tokens"] == tokens and m["num_points"] == 40
    assert m["ppl_bound"] == pytest.approx(math.exp(-m["elbo"] * 40 / tokens), rel=1e-9)
    assert m["iw_ppl"] == pytest.approx(math.exp(m["nll"] * 40 / tokens), rel=1e-9)
    assert m["log_n"] == pytest.approx(math.log(40))
    for key in ("kl", "mi", "agg_kl", "au", "elbo_per_token", "nll_per_token"):
        assert key in m
    assert "IW perplexity" in result.output and "perplexity bound" in result.output
    # per-datapoint results are in the split's order although evaluated sorted by length
    per = xr.open_dataset(text_run / "diag.nc", engine="h5netcdf")
    assert per["num_tokens"].values.tolist() == sequence_lengths(test).tolist()
    vae = SkipVAE.load(text_run)
    with torch.no_grad():
        vae.guide.eval()
        loc, log_var = vae.guide.local_params(test)
    kl = 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
    assert torch.allclose(torch.as_tensor(per["kl"].values).float(), kl, atol=1e-5)
    text = (text_run / "diag_text.md").read_text()
    assert "## Reconstructions" in text and "## Samples from the prior" in text
    assert "## Homotopies" in text
    assert ptb.vocabulary.decode(test[0]) in text
    # the run's page shows the sentences (escaped), not an image section
    page = (text_run / "diag.html").read_text()
    assert 'id="text"' in page and 'id="images"' not in page
    assert str(markupsafe.escape(ptb.vocabulary.decode(test[0]))) in page


def test_a_sweep_row_of_a_text_run_has_its_perplexities(text_run, data_dir, tmp_path):
    import shutil

    from pyro_skipvae.sweep import cell_results

    cell = tmp_path / "cell"
    shutil.copytree(text_run, cell)
    result = run_cli(
        "diagnose", cell, "--data-dir", data_dir, "--eval-size", "40", "--num-samples", "20",
        "--no-plots", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((cell / "diagnostics.json").read_text())
    row = cell_results(cell)
    assert row["ppl_bound"] == metrics["ppl_bound"] and row["iw_ppl"] == metrics["iw_ppl"]
    assert 1 < row["ppl_bound"] and 1 < row["iw_ppl"] <= row["ppl_bound"] * (1 + 1e-9)
    assert row["dataset"] == "ptb" and row["accuracy"] is None  # no labels on text


def test_perplexity_of_a_uniform_decoder_is_the_vocabulary_size(text_run, ptb, data_dir):
    """Hand-computed case: logits equal for every real token (padding and BOS, never
    targets, excluded) whatever z, and q(z|x) = p(z), so ELBO = log p(x) = −ℓ(x) log(V − 2)
    with no Monte-Carlo error and both perplexities are exactly V − 2 = 10000."""
    from pyro_skipvae.evaluation import diagnose_run

    vae = SkipVAE.load(text_run)
    with torch.no_grad():
        vae.model.decoder.output.weight.zero_()
        vae.model.decoder.output.bias.zero_()
        vae.guide.encoder.head.weight.zero_()
        vae.guide.encoder.head.bias.zero_()
    rigged = text_run.parent / "uniform"
    rigged.mkdir()
    (rigged / "config.json").write_text((text_run / "config.json").read_text())
    vae.save(rigged / "best.pt")
    m = diagnose_run(rigged, data_dir=data_dir, eval_size=40, num_samples=20, plots=False)[
        "metrics"
    ]
    assert m["kl"] == 0 and abs(m["mi"]) < 1e-5  # float32 round-off
    assert m["ppl_bound"] == pytest.approx(10000, rel=1e-5)
    assert m["iw_ppl"] == pytest.approx(10000, rel=1e-5)


def test_yahoo_without_its_training_file_exits_1_naming_it(data_dir):
    result = run_cli("fit", "--dataset", "yahoo", "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 1
    assert "yahoo.train.txt" in result.output and "missing" in result.output


def test_cli_mirrors_the_library():
    from pyro_skipvae.cli import options
    from pyro_skipvae.data import IMAGE_DATASETS, TEXT_DATASETS

    assert set(options.IMAGE_DATASETS) == set(IMAGE_DATASETS)
    assert set(options.TEXT_DATASETS) == set(TEXT_DATASETS)


def test_per_token_standard_error_matches_the_spread_of_redrawn_sets():
    """ratio_and_se: exact ratio with zero error when nats are proportional to tokens, and a
    standard error equal to the spread of R over redrawn evaluation sets (synthetic sets,
    2,000 draws of N = 200: the spread is known to ±3%, so 10% is a loose bound)."""
    from pyro_skipvae.diagnostics.estimate import ratio_and_se

    counts = torch.tensor([3.0, 10.0, 25.0])
    assert ratio_and_se(-2.5 * counts, counts) == (-2.5, 0.0)
    g = torch.Generator().manual_seed(0)
    counts = 1 + torch.poisson(torch.full((2000, 200), 20.0), generator=g)
    values = -4.0 * counts + 3.0 * counts.sqrt() * torch.randn(counts.shape, generator=g)
    results = torch.tensor([ratio_and_se(v, c) for v, c in zip(values, counts)])
    assert results[:, 0].mean() == pytest.approx(-4.0, abs=0.01)
    assert results[:, 1].mean() == pytest.approx(results[:, 0].std().item(), rel=0.1)


def test_padded_sequences_sample_tokens_then_padding(float64):
    """Draws from the masked categorical: the first L positions from softmax(logits), the
    rest padding; a position whose logits put all mass on one token always draws it."""
    torch.manual_seed(0)
    logits = torch.full((2, 3, 6), -math.inf)
    logits[0, :, 4], logits[1, :, 5] = 0.0, 0.0  # sequence n draws token 4 + n everywhere
    base = CategoricalLikelihood((3,), num_categories=6, pad_index=0)(
        logits, torch.ones(2, 3, dtype=torch.long)
    )
    d = PaddedSequence(base, 5, pad_index=0)
    draws = d.sample((7,))
    assert draws.shape == (7, 2, 5)
    assert (draws[..., :3] == torch.tensor([4, 5]).view(2, 1)).all()
    assert (draws[..., 3:] == 0).all()
    assert torch.isfinite(d.log_prob(draws)).all()
    # a spread distribution: sample frequencies match softmax(logits) (binomial error)
    spread = torch.tensor([0.0, 1.0, -1.0, 0.5, 2.0, 0.0])
    probs = spread.softmax(-1)
    one = torch.ones(1, 1, dtype=torch.long)
    tokens = CategoricalLikelihood((1,), num_categories=6, pad_index=0)(spread.view(1, 1, 6), one)
    tokens = tokens.sample((4000,))
    freq = torch.bincount(tokens.flatten(), minlength=6) / 4000
    assert ((freq - probs).abs() < 5 * (probs * (1 - probs) / 4000).sqrt()).all()
