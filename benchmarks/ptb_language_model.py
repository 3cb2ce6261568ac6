"""The text study's recipe check (issue 33 item 1): the VAEs' LSTM decoder trained as a plain
language model, to see whether the 2-3 nats between our PTB VAEs (test IW-NLL 103.99 / 104.93
nats per sentence at 256/256) and published 256-unit models (~101-102) come from the recipe.

The model is the library's own :class:`~pyro_skipvae.models.decoders.LSTMDecoder` with z ≡ 0
and ``skip=False`` (a documented equivalent of "no z"): every weight that reads z multiplies
zeros, so it gets no gradient and p(x | z = 0) is an LSTM language model whose initial state
h₀ is the learned bias of ``init_hidden``. The likelihood is the library's categorical over
the vocabulary (padding masked, EOS counted, BOS never a target), so NLL and perplexity are
counted exactly as the VAEs' are. Training is the authors' text recipe (sa-vae
``train_text.py``): SGD lr 1 on the per-sentence loss, global-norm clip 5, batch 32 by length,
dropout 0.5 on embeddings and LSTM output, uniform(±0.1) init, halve the rate every epoch
once validation stops improving after epoch ``--decay-after`` (15), stop when the rate falls
below ``--min-learning-rate`` (sa-vae: 0.03) or at ``--num-epochs`` (30); the best epoch on
validation is kept and scored on the test split. ``--lr-decay plateau-restore`` uses He et
al.'s rule instead (halve and restore the best weights after two stalled epochs; see
:mod:`pyro_skipvae.infer.optim`), with ``--num-epochs`` raised to let it run its course.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/ptb_language_model.py --out ../runs/ptb-lm

Resumable: each epoch writes ``<out>/checkpoint.pt`` atomically (weights, optimizer, data
order, RNG, history) and ``<out>/history.json``; rerun the same command to go on.
The final line is a JSON record, also written to ``<out>/result.json``.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from pyro_skipvae import checkpoint
from pyro_skipvae.data import load_dataset
from pyro_skipvae.data.text import bucket_batches, length_order, trim_collate
from pyro_skipvae.infer import Optimizer
from pyro_skipvae.infer.precision import autocast_networks
from pyro_skipvae.models import DECODERS, LIKELIHOODS


def build(splits, args):
    options = splits.vocabulary.model_options()
    likelihood = LIKELIHOODS.build(
        "categorical", splits.data_shape, options=options["likelihood_options"]
    )
    decoder = DECODERS.build(
        "lstm",
        1,  # z is a single 0: nothing of the decoder depends on it
        likelihood.param_shape,
        skip=False,
        options={"embedding_dim": args.embedding_dim, "hidden_dim": args.hidden_dim},
    )
    autocast_networks([decoder], args.precision, "cpu")
    return decoder, likelihood


def log_likelihood(decoder, likelihood, x):
    """log p(x | z = 0) of each sentence (nats)."""
    z = x.new_zeros((x.shape[0], 1), dtype=torch.float32)
    return likelihood(decoder(z, x), x).log_prob(x)


@torch.no_grad()
def evaluate(decoder, likelihood, data, batch_size=64):
    decoder.eval()
    tokens = likelihood.num_tokens(data)
    order = length_order(tokens)
    total = 0.0
    for index in order.split(batch_size):
        x = data[index][:, : int(tokens[index].max())]
        total += log_likelihood(decoder, likelihood, x).sum().item()
    decoder.train()
    nll = -total / data.shape[0]
    return {"nll": nll, "ppl": math.exp(-total / tokens.sum().item())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-epochs", type=int, default=30)
    parser.add_argument("--decay-after", type=int, default=15)
    parser.add_argument("--min-learning-rate", type=float, default=0.03)
    parser.add_argument(
        "--lr-decay",
        default="plateau",
        choices=["plateau", "plateau-restore"],
        help="plateau: sa-vae's rule (halve every epoch once stalled); plateau-restore: He et "
        "al.'s (halve and restore the best weights after --lr-decay-patience stalled epochs)",
    )
    parser.add_argument("--lr-decay-patience", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=None)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("ptb", train_size=args.train_size, val_size=args.val_size)
    torch.manual_seed(args.seed)
    decoder, likelihood = build(splits, args)
    optimizer = Optimizer(
        decoder.parameters(),
        name="sgd",
        learning_rate=1.0,
        clip_norm=5.0,
        lr_decay=args.lr_decay,
        lr_decay_min_epochs=args.decay_after,
        lr_decay_patience=args.lr_decay_patience,
        min_learning_rate=args.min_learning_rate,
    )
    generator = torch.Generator().manual_seed(args.seed)
    lengths = likelihood.num_tokens(splits.train)
    batches, collate = bucket_batches(lengths, 32), trim_collate(lengths)
    history, best = [], {"val_nll": math.inf}
    path = args.out / "checkpoint.pt"
    if path.exists():
        state = checkpoint.load(path)
        decoder.load_state_dict(state["decoder"])
        optimizer.set_state(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        history, best = state["history"], state["best"]
    stopped = bool(history) and history[-1].get("stopped", False)
    while len(history) < args.num_epochs and not stopped:
        epoch, started, total = len(history) + 1, time.perf_counter(), 0.0
        for index in batches(generator):
            x = collate(splits.train, index)
            loss = -log_likelihood(decoder, likelihood, x).sum()
            loss.backward()
            optimizer.step(size=x.shape[0])
            total += loss.item()
        val = evaluate(decoder, likelihood, splits.val)
        improved = val["nll"] < best["val_nll"]
        record = {
            "epoch": epoch,
            "train_nll": total / splits.train.shape[0],
            "val_nll": val["nll"],
            "val_ppl": val["ppl"],
            "learning_rate": optimizer.learning_rate,
            "seconds": time.perf_counter() - started,
            "load_average": os.getloadavg()[0],
        }
        stopped = optimizer.end_epoch(epoch, improved)
        record["stopped"] = stopped
        if improved:
            # a copy: state_dict() shares storage with the weights the next steps change
            weights = {k: v.detach().clone() for k, v in decoder.state_dict().items()}
            best = {"val_nll": val["nll"], "epoch": epoch, "decoder": weights}
        if optimizer.restore_best:  # plateau-restore: go on from the best epoch's weights
            decoder.load_state_dict(best["decoder"])
        history.append(record)
        checkpoint.atomic_save(
            {
                "format": "ptb-language-model/1",
                "decoder": decoder.state_dict(),
                "optimizer": optimizer.get_state(),
                "generator": generator.get_state(),
                "rng": torch.get_rng_state(),
                "history": history,
                "best": best,
            },
            path,
        )
        checkpoint.atomic_write_json(args.out / "history.json", history)
        print(json.dumps(record), flush=True)
    decoder.load_state_dict(best["decoder"])
    test = evaluate(decoder, likelihood, splits.test)
    result = {
        "model": f"LSTM LM {args.embedding_dim}/{args.hidden_dim} (pyro_skipvae LSTMDecoder, z = 0)",
        "selected_epoch": best["epoch"],
        "epochs": len(history),
        "stopped_by_min_learning_rate": stopped,
        "val_nll": best["val_nll"],
        "test_nll": test["nll"],
        "test_ppl": test["ppl"],
        "precision": args.precision,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    checkpoint.atomic_write_json(args.out / "result.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
