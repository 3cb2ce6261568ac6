r"""Text corpora as padded tensors of token ids: Penn Treebank and Yahoo Answers.

A corpus split is one ``LongTensor`` of shape ``(N, T)``: row n holds the ids of sentence n's
tokens followed by the end-of-sentence id :data:`EOS_INDEX`, then :data:`PAD_INDEX` up to the
width T shared by all splits of the data set. The beginning-of-sentence symbol is not stored:
a decoder prepends it itself (it is never predicted, so it is not data). Padding is a suffix,
so a sequence's length (its real tokens, EOS included) is the number of non-pad entries.

Tokens are the whitespace-separated words of the files as they are (PTB's ``<unk>`` and
Yahoo's ``_UNK`` stay tokens). The vocabulary follows the convention of the authors' code and
of the Yahoo dictionary (Kim et al. 2018, ``preprocess_text.py``): ``<pad>`` 0, ``<unk>`` 1,
``<s>`` 2, ``</s>`` 3, then the words: for PTB every word of the whole training split by
decreasing count (PTB's own ``<unk>`` *is* the unknown-word token), for Yahoo the SA-VAE
dictionary file.

**Long sequences.** With ``max_length = L``, sentences of more than L words are dropped from
every split (as the authors' preprocessing does; truncating them would invent sentences that
end where the corpus's do not), and the count is logged; the vocabulary stays the corpus's
(the authors count words in the kept sentences only). The default ``None`` keeps every
sentence; T is then the longest sentence of the data set plus one (PTB: 82 + 1). Empty lines
are dropped as well (the authors drop them; PTB and Yahoo have none).

**Batches by length.** :func:`bucket_batches` groups sentences of similar length into the
same minibatch, and :func:`trim_collate` cuts each minibatch to its longest sentence, so a
batch carries little padding (PTB, batch 32: 0.1% of the positions are padding, against
53% for random minibatches trimmed the same way).
"""

import gzip
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
PAD_INDEX, UNK_INDEX, BOS_INDEX, EOS_INDEX = 0, 1, 2, 3
SPECIALS = (PAD, UNK, BOS, EOS)

#: named text data sets → (folder, file stem); files ``<folder>/<stem>.{train,valid,test}.txt[.gz]``
TEXT_DATASETS = {"ptb": ("ptb", "ptb"), "yahoo": ("yahoo", "yahoo")}
#: data sets whose vocabulary is a dictionary file ``<folder>/<stem>.dict[.gz]`` rather than
#: the words of the training split (Yahoo: the SA-VAE dictionary, 20,001 entries)
DICTIONARY_DATASETS = {"yahoo"}
SPLIT_FILES = {"train": "train", "val": "valid", "test": "test"}


@dataclass(frozen=True)
class Vocabulary:
    """Word ↔ id, with the special tokens at ids 0–3 (see the module docstring).

    :param tuple words: the word of each id, ``words[:4] == SPECIALS``.
    """

    words: tuple[str, ...]
    index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if tuple(self.words[:4]) != SPECIALS:
            raise DataError(
                f"vocabulary: expected the special tokens {list(SPECIALS)} at ids 0-3, "
                f"found {list(self.words[:4])}"
            )
        index = {w: i for i, w in enumerate(self.words)}
        if len(index) != len(self.words):
            duplicated = next(w for w, c in Counter(self.words).items() if c > 1)
            raise DataError(f"vocabulary: the word {duplicated!r} appears twice")
        object.__setattr__(self, "index", index)

    def __len__(self):
        return len(self.words)

    @classmethod
    def from_sentences(cls, sentences: Iterable[Sequence[str]]) -> "Vocabulary":
        """The specials, then every word of ``sentences`` by decreasing count (ties: first seen)."""
        counts = Counter(w for s in sentences for w in s)
        ranked = sorted(counts, key=lambda w: -counts[w])  # sorted() is stable: ties keep order
        return cls(SPECIALS + tuple(w for w in ranked if w not in SPECIALS))

    @classmethod
    def from_file(cls, path) -> "Vocabulary":
        """A dictionary file of ``word id`` lines with ids 0 … V−1 (e.g. ``yahoo.dict``).

        :raises DataError: a malformed line, or ids that are not 0 … V−1.
        """
        by_id = {}
        for number, line in enumerate(read_lines(path), 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{path}, line {number}: expected 'word id', found {line!r}")
            by_id[int(parts[1])] = parts[0]
        if sorted(by_id) != list(range(len(by_id))):
            raise DataError(f"{path}: expected the ids 0 … {len(by_id) - 1}, each once")
        return cls(tuple(by_id[i] for i in range(len(by_id))))

    def encode(self, words: Sequence[str]) -> list[int]:
        """Ids of ``words`` (unknown words → :data:`UNK_INDEX`), without EOS."""
        return [self.index.get(w, UNK_INDEX) for w in words]

    def decode(self, ids) -> str:
        """The words of one sequence of ids up to (not including) EOS or padding."""
        words = []
        for i in torch.as_tensor(ids).tolist():
            if i in (EOS_INDEX, PAD_INDEX):
                break
            words.append(self.words[i])
        return " ".join(words)

    def model_options(self) -> dict:
        """The components and options of a model of this vocabulary's sequences: LSTM
        encoder and decoder, categorical likelihood over ``len(self)`` tokens masking padding."""
        return {
            "decoder": "lstm",
            "encoder": "lstm",
            "likelihood": "categorical",
            "encoder_options": {"num_categories": len(self)},
            "likelihood_options": {"num_categories": len(self), "pad_index": PAD_INDEX},
        }


def read_lines(path) -> list[str]:
    """The lines of a text file, gzip-compressed when its name ends in ``.gz``."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path} could not be read ({type(e).__name__}: {e})") from None


def find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def encode_sentences(
    sentences: Sequence[Sequence[str]], vocabulary: Vocabulary, width: int
) -> torch.Tensor:
    """``(N, width)`` ids: each sentence's words, EOS, then padding.

    :raises DataError: a sentence of more than ``width − 1`` words.
    """
    rows = []
    for n, words in enumerate(sentences):
        if len(words) + 1 > width:
            raise DataError(f"sentence {n} has {len(words)} words; at most {width - 1} fit")
        rows.append(vocabulary.encode(words) + [EOS_INDEX] + [PAD_INDEX] * (width - len(words) - 1))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)


def sequence_lengths(x: torch.Tensor, pad_index: int = PAD_INDEX) -> torch.Tensor:
    """Real tokens per row of a padded ``(..., T)`` tensor (padding is a suffix), shape ``(...)``."""
    return (x != pad_index).sum(-1)


def load_text_splits(name: str, root: Path, *, max_length: int | None = None):
    """``(train, val, test, vocabulary)`` of the text data set ``name`` under ``root``.

    :raises DataError: a missing file (naming it and where it belongs) or a malformed one.
    """
    folder_name, stem = TEXT_DATASETS[name]
    folder = root / folder_name
    paths = {}
    for split, suffix in SPLIT_FILES.items():
        path = find_file(folder, f"{stem}.{suffix}.txt")
        if path is None:
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DataError(
                f"{name}: the {split} split is missing: expected {folder / f'{stem}.{suffix}.txt'} "
                f"(or .gz), found {', '.join(present) or 'no files'} in {folder}. Put the file "
                f"there, or pass --data-dir DIR with DIR/{folder_name}/{stem}.{suffix}.txt"
                + (
                    " (the 100,000-document training split of Yang et al. 2017, as used by SA-VAE; "
                    "it is not redistributed with pyro-skipvae)"
                    if name == "yahoo" and split == "train"
                    else ""
                )
            )
        paths[split] = path
    sentences, vocabulary = {}, None
    for split, path in paths.items():
        lines = [line.split() for line in read_lines(path)]
        if split == "train" and name not in DICTIONARY_DATASETS:
            # the corpus's vocabulary, whatever max_length drops
            vocabulary = Vocabulary.from_sentences(lines)
        kept = [s for s in lines if s and (max_length is None or len(s) <= max_length)]
        if len(kept) < len(lines):
            logger.info(
                "%s %s: dropped %d of %d lines (empty or longer than max_length=%s)",
                name,
                split,
                len(lines) - len(kept),
                len(lines),
                max_length,
            )
        if not kept:
            raise DataError(f"{path}: no sentences left (max_length={max_length})")
        sentences[split] = kept
    if name in DICTIONARY_DATASETS:
        dictionary = find_file(folder, f"{stem}.dict")
        if dictionary is None:
            raise DataError(f"{name}: expected the dictionary {folder / f'{stem}.dict'} (or .gz)")
        vocabulary = Vocabulary.from_file(dictionary)
    width = 1 + max(len(s) for split in sentences.values() for s in split)
    tensors = {k: encode_sentences(v, vocabulary, width) for k, v in sentences.items()}
    return tensors["train"], tensors["val"], tensors["test"], vocabulary


# ---------------------------------------------------------------------------- batching
def bucket_batches(
    lengths: torch.Tensor, batch_size: int
) -> Callable[[torch.Generator], list[torch.Tensor]]:
    """Minibatches of sentences of similar length, in a random order each epoch.

    Each epoch: a random permutation, stably sorted by length (so sentences of equal length
    are in random order), cut into minibatches of ``batch_size`` (the last may be smaller),
    the minibatches then shuffled. Every draw comes from the generator passed in, so a
    resumed run sees exactly the batches an uninterrupted one would. The authors batch
    sentences of *exactly* equal length (Kim et al. 2018, ``preprocess_text.py``), which
    gives minibatches of varying size; here all have ``batch_size`` and a minibatch may
    straddle two neighbouring lengths.
    """
    lengths = torch.as_tensor(lengths)

    def batches(generator):
        order = torch.randperm(lengths.shape[0], generator=generator)
        order = order[torch.argsort(lengths[order], stable=True)]
        chunks = list(order.split(batch_size))
        return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]

    return batches


def trim_collate(
    lengths: torch.Tensor,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``collate(data, index)``: the rows ``index`` of ``data`` cut to their longest sequence."""
    lengths = torch.as_tensor(lengths)

    def collate(data, index):
        return data[index][:, : int(lengths[index].max())]

    return collate


def length_order(lengths: torch.Tensor) -> torch.Tensor:
    """A permutation sorting sequences by length (stable), so that consecutive chunks of an
    evaluation set hold similar lengths and the decoder runs over little padding."""
    return torch.argsort(torch.as_tensor(lengths), stable=True)


def check_max_length(max_length) -> None:
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ConfigError(f"max_length must be a positive integer or None, found {max_length!r}")


__all__ = [
    "BOS_INDEX",
    "EOS_INDEX",
    "PAD_INDEX",
    "TEXT_DATASETS",
    "UNK_INDEX",
    "Vocabulary",
    "bucket_batches",
    "encode_sentences",
    "length_order",
    "load_text_splits",
    "sequence_lengths",
    "trim_collate",
]
