"""Shared fixtures. Real MNIST comes from the shared data folder (../shared/data or
$SKIPVAE_DATA_DIR); decompressed copies go to a per-session temporary cache."""

import os
import shutil
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_skipvae.data import load_dataset, resolve_data_dir


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # The data folder is read-only in CI; decompressed files go to a private cache.
    os.environ.setdefault("SKIPVAE_CACHE_DIR", str(tmp_path_factory.mktemp("skipvae-cache")))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Default dtype float64 for the test (numerical checks against closed forms)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def data_dir():
    """The real data folder; the suite fails (does not skip) without it."""
    return resolve_data_dir(expected="MNIST/raw/*-ubyte.gz")


@pytest.fixture(scope="session")
def mnist(data_dir):
    """Real MNIST: 500 training and 200 validation images (intensities in [0, 1])."""
    return load_dataset("mnist", data_dir=data_dir, train_size=500, val_size=200)


@pytest.fixture
def tiny_options():
    """Small networks so real-data fits take a fraction of a second per epoch."""
    return {"latent_dim": 4, "hidden_dims": (32, 32)}


def binary(shape, seed=0):
    """Synthetic binary tensor (for shape tests only, not a stand-in for a data set)."""
    return torch.bernoulli(torch.full(shape, 0.3), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def skipvae_exe():
    """The installed console script ``skipvae`` (the tests run it as a user would)."""
    found = shutil.which("skipvae") or str(Path(sys.executable).with_name("skipvae"))
    assert os.path.exists(found), "the console script `skipvae` must be installed"
    return found


#: Mutation testing (benchmarks/mutation.sh): the test files that specify each mutated
#: module's behaviour. mutmut already runs only the tests that call a mutated function; this
#: narrows them to the module's own tests, so that a surviving mutant of a function every
#: test passes through (Model.forward, say) costs seconds, not the whole suite. The longest
#: matching module prefix wins; a mutant of a module not listed runs all its tests.
MUTATION_TESTS = {
    "pyro_skipvae.checkpoint": ["test_fit", "test_behaviour", "test_optim"],
    "pyro_skipvae.diagnostics": ["test_diagnostics", "test_estimators", "test_properties"],
    "pyro_skipvae.diagnostics.elbo": [
        "test_estimators",
        "test_diagnostics",
        "test_elbos",
        "test_objectives",
        "test_semi_amortized",
        "test_models",
    ],
    "pyro_skipvae.diagnostics.nll": [
        "test_estimators",
        "test_diagnostics",
        "test_properties",
        "test_pixelcnn",
    ],
    "pyro_skipvae.diagnostics.classify": [
        "test_diagnostics",
        "test_estimators",
        "test_diagnose_tables",
    ],
    "pyro_skipvae.diagnostics.diagnosis": [
        "test_diagnose_tables",
        "test_diagnostics",
        "test_properties",
        "test_text",
        "test_pixelcnn",
        "test_behaviour",
        "test_evaluation",
    ],
    "pyro_skipvae.diagnostics.latent": [
        "test_diagnostics",
        "test_estimators",
        "test_properties",
        "test_diagnose_tables",
    ],
    "pyro_skipvae.diagnostics.estimate": [
        "test_diagnostics",
        "test_estimators",
        "test_properties",
        "test_diagnose_tables",
        "test_text",
    ],
    "pyro_skipvae.diagnostics.netcdf": ["test_diagnose_tables", "test_diagnostics"],
    "pyro_skipvae.diagnostics.plots": ["test_plots", "test_diagnose_tables", "test_pixelcnn"],
    "pyro_skipvae.diagnostics.report": ["test_diagnose_tables"],
    "pyro_skipvae.diagnostics.tables": ["test_diagnose_tables", "test_diagnostics"],
    "pyro_skipvae.diagnostics.text": ["test_lstm_architecture", "test_text", "test_diagnostics"],
    "pyro_skipvae.guides": [
        "test_behaviour",
        "test_models",
        "test_refine",
        "test_conv_encoder",
        "test_components",
    ],
    "pyro_skipvae.guides.guide": [
        "test_behaviour",
        "test_models",
        "test_refine",
        "test_components",
        "test_collapse_remedies",
    ],
    "pyro_skipvae.guides.conv": ["test_pixelcnn_architecture", "test_conv_encoder"],
    "pyro_skipvae.guides.lstm": [
        "test_lstm_architecture",
        "test_text",
        "test_skip_wiring",
        "test_semi_amortized",
    ],
    "pyro_skipvae.infer": ["test_objectives", "test_behaviour", "test_fit"],
    "pyro_skipvae.infer.distributed": ["test_distributed_helpers", "test_fit"],
    "pyro_skipvae.infer.compile": ["test_compile"],
    "pyro_skipvae.infer.aggressive": ["test_collapse_remedies", "test_recorded_settings"],
    "pyro_skipvae.infer.precision": ["test_precision"],
    "pyro_skipvae.infer.elbos": [
        "test_elbos",
        "test_objectives",
        "test_trace_elbo",
        "test_fit_parts",
    ],
    "pyro_skipvae.infer.fit": [
        "test_training_loop",
        "test_behaviour",
        "test_optim",
        "test_fit_parts",
    ],
    "pyro_skipvae.infer.free_bits": ["test_objectives", "test_distributed_helpers", "test_refine"],
    "pyro_skipvae.infer.optim": ["test_training_loop", "test_optim"],
    "pyro_skipvae.infer.refine": ["test_refine", "test_semi_amortized"],
    "pyro_skipvae.infer.svi": [
        "test_objectives",
        "test_behaviour",
        "test_fit",
        "test_distributed_helpers",
    ],
    "pyro_skipvae.infer.semi_amortized": [
        "test_semi_amortized",
        "test_refine",
        "test_objectives",
        "test_components",
    ],
    "pyro_skipvae.infer.trace_elbo": [
        "test_training_loop",
        "test_trace_elbo",
        "test_objectives",
        "test_elbos",
    ],
    "pyro_skipvae.models": ["test_behaviour", "test_models", "test_properties"],
    "pyro_skipvae.models.decoders.base": [
        "test_lstm_architecture",
        "test_behaviour",
        "test_models",
        "test_text",
    ],
    "pyro_skipvae.models.decoders.lstm": [
        "test_lstm_architecture",
        "test_text",
        "test_skip_wiring",
    ],
    "pyro_skipvae.models.decoders.pixelcnn": [
        "test_pixelcnn_architecture",
        "test_pixelcnn",
        "test_skip_wiring",
    ],
    "pyro_skipvae.models.likelihoods": [
        "test_likelihoods",
        "test_models",
        "test_text",
        "test_pixelcnn",
        "test_components",
        "test_skip_wiring",
    ],
    "pyro_skipvae.models.priors": [
        "test_priors",
        "test_behaviour",
        "test_models",
        "test_components",
    ],
}


def pytest_collection_modifyitems(config, items):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:  # not running a mutant (or mutmut's own bookkeeping runs)
        return
    module = mutant.split(".x", 1)[0]  # mutmut names: package.module.x_function__mutmut_3
    prefixes = [p for p in MUTATION_TESTS if module == p or module.startswith(p + ".")]
    if not prefixes:
        return
    files = MUTATION_TESTS[max(prefixes, key=len)]
    keep = [item for item in items if item.path.stem in files]
    config.hook.pytest_deselected(items=[item for item in items if item.path.stem not in files])
    items[:] = keep
