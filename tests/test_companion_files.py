"""Companion files of diagnose and compare keep every dotted part of the name (issue 35,
item 3): two diagnoses of one run into ``diag.test.json`` and ``diag.val.json`` wrote one
``diag.nc``, and ``compare --out table.v1`` and ``table.v2`` one ``table.md``."""

import json

import pytest

from pyro_skipvae.evaluation import compare_output_paths, compare_runs, output_paths


@pytest.mark.parametrize(
    "out, stem",
    [
        ("runs/a/diag.test.json", "runs/a/diag.test"),
        ("runs/a/diag.val.json", "runs/a/diag.val"),
        ("runs/a/diag.test", "runs/a/diag.test"),  # no .json: nothing is dropped
        ("runs/a/DIAG.JSON", "runs/a/DIAG"),
        ("runs/v1.2/diag.json", "runs/v1.2/diag"),
    ],
)
def test_diagnose_companions_keep_every_dotted_part(out, stem):
    paths = output_paths("runs/a", out)
    assert str(paths["json"]) == out
    assert str(paths["netcdf"]) == f"{stem}.nc"
    assert str(paths["plots"]) == f"{stem}_plots"
    assert str(paths["text"]) == f"{stem}_text.md"


def test_default_diagnose_outputs_sit_in_the_run_folder():
    paths = output_paths("runs/a")
    assert [str(paths[k]) for k in ("json", "netcdf")] == [
        "runs/a/diagnostics.json",
        "runs/a/diagnostics.nc",
    ]


def test_two_diagnoses_of_one_run_have_distinct_companions():
    test, val = output_paths("r", "r/diag.test.json"), output_paths("r", "r/diag.val.json")
    assert all(test[k] != val[k] for k in test)


@pytest.mark.parametrize(
    "out, stem",
    [("t.v1", "t.v1"), ("t.v1.md", "t.v1"), ("t.v1.csv", "t.v1"), ("t.json", "t.json")],
)
def test_compare_companions_keep_every_dotted_part(out, stem):
    assert {k: str(v) for k, v in compare_output_paths(out).items()} == {
        "markdown": f"{stem}.md",
        "csv": f"{stem}.csv",
    }


def test_two_compare_tables_do_not_overwrite_each_other(tmp_path):
    for name, elbo in (("a", -90.0), ("b", -80.0)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"elbo": elbo, "kl": 1.0}))
    compare_runs([tmp_path / "a.json"], out=tmp_path / "table.v1")
    compare_runs([tmp_path / "b.json"], out=tmp_path / "table.v2")
    v1, v2 = (tmp_path / "table.v1.md").read_text(), (tmp_path / "table.v2.md").read_text()
    assert "-90" in v1 and "-80" not in v1 and "-80" in v2
    assert (tmp_path / "table.v1.csv").exists() and (tmp_path / "table.v2.csv").exists()
