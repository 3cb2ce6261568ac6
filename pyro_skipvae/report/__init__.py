"""One self-contained HTML page about a run, or a comparison of runs, for people judging
collapse: ``skipvae report RUN_DIR... --out report.html`` or

>>> from pyro_skipvae.report import write_report
>>> write_report(["runs/mnist-vae", "runs/mnist-skip-vae"], "report.html",
...              names=["VAE", "Skip-VAE"])                               # doctest: +SKIP

Pure functions of the run folders' files (:mod:`.runs`): nothing is recomputed, so a report
takes seconds. :mod:`.verdicts` turns metrics into words, :mod:`.content` into tables,
:mod:`.figures` draws the training curves and describes every picture, :mod:`.page` fills
the Jinja2 template (``templates/report.html``).
"""

from .page import SECTIONS, build_report, report_context, write_report
from .runs import RunFiles, load_run
from .verdicts import collapse_verdict, psis_verdict

__all__ = [
    "RunFiles",
    "SECTIONS",
    "build_report",
    "collapse_verdict",
    "load_run",
    "psis_verdict",
    "report_context",
    "write_report",
]
