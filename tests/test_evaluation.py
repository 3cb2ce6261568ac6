"""evaluation.diagnose_run as a pipeline of named steps, and its options (DiagnoseOptions):
validated once where they are made, given as one dataclass or as the old keywords, the
steps checked one by one on a tiny real-MNIST run (made once per module)."""

import dataclasses
import json
import math
import re
import shutil
import subprocess

import pytest
import torch

from pyro_skipvae.diagnose_options import DiagnoseOptions
from pyro_skipvae.errors import CheckpointError, ConfigError
from pyro_skipvae.evaluation import (
    EvaluationData,
    LoadedRun,
    diagnose_run,
    load_run,
    prepare_split,
)

OPTION_NAMES = [f.name for f in dataclasses.fields(DiagnoseOptions)]


# ---------------------------------------------------------------- DiagnoseOptions
def test_options_are_the_seventeen_keywords_of_diagnose_run_plus_progress():
    assert OPTION_NAMES == [
        "split", "num_samples", "nll_size", "eval_size", "dataset", "data_dir",
        "num_refine_steps", "out", "classifier_train_size", "accuracy_dataset",
        "au_threshold", "embedding", "plots", "keep_log_weights", "seed", "device", "precision",
        "progress",
    ]  # fmt: skip
    o = DiagnoseOptions()
    assert (o.split, o.num_samples, o.au_threshold, o.embedding, o.plots, o.seed) == (
        "test",
        500,
        0.01,
        "tsne",
        True,
        0,
    )
    assert o.nll_size is o.eval_size is o.num_refine_steps is o.out is o.precision is None
    assert o.keep_log_weights is o.progress is False


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"split": "train"}, "unknown split 'train'; expected one of: test, val"),
        ({"eval_size": 0}, "eval_size must be a positive integer, found 0"),
        ({"nll_size": 0}, "nll_size must be a positive integer, found 0"),
        ({"classifier_train_size": -3}, "classifier_train_size must be a positive integer, found -3"),
        ({"num_samples": -1}, "num_samples and num_refine_steps must be >= 0, found -1 and None"),
        ({"num_refine_steps": -2}, "num_samples and num_refine_steps must be >= 0, found 500 and -2"),
        ({"au_threshold": -0.5}, "au_threshold must be a number >= 0, found -0.5"),
        ({"au_threshold": math.nan}, "au_threshold must be a number >= 0, found nan"),
        ({"embedding": "umap"}, "unknown embedding 'umap'; expected one of: tsne, pca"),
    ],
)  # fmt: skip
def test_a_bad_option_is_a_config_error_before_the_run_is_read(keywords, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DiagnoseOptions(**keywords)
    # diagnose_run checks its options first: no CheckpointError for the missing run
    with pytest.raises(ConfigError, match=re.escape(message)):
        diagnose_run(tmp_path / "no-run", **keywords)


@pytest.mark.parametrize(
    "keywords",
    [{"au_threshold": 0.0}, {"num_samples": 0, "num_refine_steps": 0}, {"eval_size": 1},
     {"split": "val", "embedding": "pca"}],
)  # fmt: skip
def test_the_smallest_valid_values_are_accepted(keywords):
    options = DiagnoseOptions(**keywords)
    assert all(getattr(options, k) == v for k, v in keywords.items())


def test_an_unknown_keyword_is_a_type_error_naming_every_option(tmp_path):
    with pytest.raises(TypeError, match="unknown option.* num_sample ") as e:
        diagnose_run(tmp_path, num_sample=5)
    assert all(name in str(e.value) for name in OPTION_NAMES)
    with pytest.raises(TypeError, match="unknown option.*bogus, zzz"):
        DiagnoseOptions.from_keywords(zzz=1, bogus=2)


def test_options_or_keywords_not_both_and_options_of_the_right_type(tmp_path):
    with pytest.raises(TypeError, match=r"either options= or keywords.*seed"):
        diagnose_run(tmp_path, options=DiagnoseOptions(), seed=1)
    with pytest.raises(TypeError, match="options must be a DiagnoseOptions, found dict"):
        diagnose_run(tmp_path, options={"seed": 1})
    options = DiagnoseOptions(seed=4)
    assert DiagnoseOptions.from_keywords(options) is options
    assert DiagnoseOptions.from_keywords(seed=4) == options


def test_options_are_frozen_and_replace_revalidates():
    options = DiagnoseOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 3
    assert dataclasses.replace(options, seed=3).seed == 3
    with pytest.raises(ConfigError, match="eval_size"):
        dataclasses.replace(options, eval_size=0)


# ---------------------------------------------------------------- the steps, on a real run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, skipvae_exe):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    subprocess.run(
        [skipvae_exe, "fit", "--train-size", "300", "--val-size", "100", "--num-epochs", "1",
         "--hidden-dims", "16", "--latent-dim", "4", "--out", str(out), "--quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def test_load_run_reads_config_model_and_the_data_set_to_evaluate(run_dir):
    run = load_run(run_dir, DiagnoseOptions())
    assert isinstance(run, LoadedRun) and run.run_dir == run_dir
    assert (run.dataset, run.trained_on, run.binarize) == ("mnist", "mnist", "dynamic")
    assert run.vae.config.latent_dim == 4
    # another data set is binarised as that data set is by default (files: not at all)
    other = load_run(run_dir, DiagnoseOptions(dataset="fashion-mnist"))
    assert (other.dataset, other.trained_on) == ("fashion-mnist", "mnist")
    from pyro_skipvae.data import default_binarization

    assert other.binarize == default_binarization("fashion-mnist")


def test_load_run_refuses_a_folder_that_is_not_a_run(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="holds no best.pt"):
        load_run(tmp_path, DiagnoseOptions())
    shutil.copy(run_dir / "best.pt", tmp_path / "best.pt")
    config = json.loads((run_dir / "config.json").read_text())
    del config["run"]["dataset"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"does not name the run's data set \(run.dataset\)"):
        load_run(tmp_path, DiagnoseOptions())


def test_prepare_split_cuts_binarises_and_keeps_training_data_only_with_labels(run_dir):
    run = load_run(run_dir, DiagnoseOptions())
    options = DiagnoseOptions(split="val", eval_size=30, classifier_train_size=50)
    split = prepare_split(run, options)
    assert isinstance(split, EvaluationData)
    assert split.data.shape == (30, 1, 28, 28) and split.labels.shape == (30,)
    assert split.train_data.shape == (50, 1, 28, 28) and split.train_labels.shape == (50,)
    # binarised once, for the likelihood: only 0 and 1, the same draw each time
    assert set(split.data.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(prepare_split(run, options).data, split.data)
    assert split.tokens is None and split.order is None and split.vocabulary is None


def test_options_and_keywords_give_the_same_diagnosis(run_dir, tmp_path):
    keywords = dict(split="val", eval_size=40, num_samples=5, nll_size=20,
                    classifier_train_size=60, embedding="pca", plots=False, seed=2)  # fmt: skip
    by_keywords = diagnose_run(run_dir, out=tmp_path / "a.json", **keywords)
    options = DiagnoseOptions(out=tmp_path / "b.json", **keywords)
    by_options = diagnose_run(run_dir, options=options)
    a, b = by_keywords["metrics"], by_options["metrics"]
    for m in (a, b):
        m.pop("seconds"), m.pop("netcdf")
    assert a == b and list(a) == list(b)
    assert (a["split"], a["num_points"], a["nll_num_points"], a["seed"]) == ("val", 40, 20, 2)
    assert a["classifier_num_train"] == 60
    assert by_options["paths"]["json"] == str(tmp_path / "b.json")
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["netcdf"] == str(tmp_path / "b.nc") and (tmp_path / "b.nc").is_file()
    assert not (tmp_path / "b_plots").exists()
