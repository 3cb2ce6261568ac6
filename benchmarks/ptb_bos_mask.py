"""How much masking BOS in the LSTM decoder's softmax moves Penn Treebank perplexity.

The decoder scores p(x_t | x_<t, z) with the logits of padding and BOS at −∞ (neither is ever a
target); the authors' decoders (harvardnlp/sa-vae ``models_text.py``, yoonkim/skip-vae) keep
BOS in their softmax. ``train`` fits a small LSTM VAE with ``skipvae fit`` (its options after
``--``), optionally the authors' way (``--bos-in-softmax``: the BOS logit left finite while
training); ``score`` evaluates a run's test ELBO and perplexity bound
exp(−Σ ELBO / Σ tokens) with BOS masked and with BOS in the softmax, on the same draws of z.

    python benchmarks/ptb_bos_mask.py train runs/bos/ours -- --dataset ptb --train-size 3000 ...
    python benchmarks/ptb_bos_mask.py train runs/bos/authors --bos-in-softmax -- --dataset ptb ...
    python benchmarks/ptb_bos_mask.py score runs/bos/ours --test-size 1000

``score`` prints one JSON line.
"""

import argparse
import json
import math
import sys
import time


def bos_in_softmax():
    """Leave the BOS logit finite in every LSTMDecoder built from now on (the authors' way)."""
    from pyro_skipvae.models.decoders import lstm

    init = lstm.LSTMDecoder.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.never[self.bos_index] = 0.0

    lstm.LSTMDecoder.__init__ = patched


def train(args, fit_options):
    from pyro_skipvae.cli.main import cli

    if args.bos_in_softmax:
        bos_in_softmax()
    cli.main(["-v", "fit", *fit_options, "--out", args.run], standalone_mode=True)


def score(args):
    import pyro

    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import load_dataset

    vae = SkipVAE.load(args.run)
    test = load_dataset("ptb").test[: args.test_size]
    decoder = vae.model.decoder
    tokens = int((test != decoder.pad_index).sum())
    result = {"run": args.run, "test_size": int(test.shape[0]), "tokens": tokens}
    for name, bos_logit in (("bos_masked", -math.inf), ("bos_in_softmax", 0.0)):
        decoder.never[decoder.bos_index] = bos_logit
        pyro.set_rng_seed(0)  # the same z draws for both
        start = time.perf_counter()
        elbo = vae.evaluate(test, batch_size=250)["elbo"]
        result[name] = {
            "elbo": elbo,
            "ppl_bound": math.exp(-elbo * test.shape[0] / tokens),
            "seconds": round(time.perf_counter() - start, 1),
        }
    print(json.dumps(result))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, fit_options = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("run")
    t.add_argument("--bos-in-softmax", action="store_true")
    s = sub.add_parser("score")
    s.add_argument("run")
    s.add_argument("--test-size", type=int, default=None)
    args = parser.parse_args(own)
    if args.command == "train":
        train(args, fit_options)
    else:
        score(args)


if __name__ == "__main__":
    main()
