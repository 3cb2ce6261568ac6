"""Every script in examples/ runs at a tiny size on real MNIST (in this process, via runpy)."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--train-size", "300", "--num-epochs", "1", "--latent-dim", "4"]
RUNS = {
    "custom_prior.py": (["--hidden-dims", "32", "32"], "reloaded: StudentTPrior, df = 5"),
    "custom_likelihood.py": (["--hidden-dims", "32", "32"], "validation ELBO"),
    "iwae.py": (
        ["--hidden-dims", "32", "32", "--num-particles", "3"],
        " iwae (K=3): validation ELBO",
    ),
    "semi_amortized_guide.py": (
        ["--hidden-dims", "32", "32", "--num-refine-steps", "2"],
        "amortization gap",
    ),
    "plain_pyro_vae.py": (["--hidden", "32", "--num-samples", "20"], "MI I_q(x;z), full set"),
}


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} - {"student_t.py"} == set(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_example_runs_on_real_mnist(name, data_dir, tmp_path, monkeypatch, capsys):
    args, expected = RUNS[name]
    argv = [name, *TINY, *args, "--data-dir", str(data_dir)]
    if name == "custom_prior.py":
        argv += ["--out", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])  # as `python examples/x.py`
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert expected in capsys.readouterr().out
