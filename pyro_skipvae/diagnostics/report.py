"""Deprecated: the old home of :func:`~pyro_skipvae.diagnostics.diagnose`, the text tables,
the netCDF writer and the plot orchestration, now split by job:

* :mod:`.diagnosis`: :func:`~.diagnosis.diagnose`, its table of named metrics
  :data:`~.diagnosis.METRICS` and :func:`~.diagnosis.consistency_checks`;
* :mod:`.tables`: :data:`~.tables.TABLE_ROWS`, :func:`~.tables.format_table`,
  :func:`~.tables.compare_table`;
* :mod:`.netcdf`: :func:`~.netcdf.per_datapoint_dataset`, :func:`~.netcdf.write_netcdf`;
* :mod:`.plots`: :func:`~.plots.plot_diagnostics`, :func:`~.plots.decode`,
  :func:`~.plots.prior_sample`;
* :mod:`.estimate`: :func:`~.estimate.ratio_and_se`; :mod:`.classify`:
  :func:`~.classify.accuracy_metrics`, :data:`~.classify.CLASSIFIERS`.

Each old name still resolves here, to the same object, with a :class:`DeprecationWarning`
naming its new home. (The HTML report is the package :mod:`pyro_skipvae.report`.)
"""

import importlib
import warnings

#: old name → the module (in :mod:`pyro_skipvae.diagnostics`) that now holds it
MOVED = {
    "CLASSIFIERS": "classify",
    "accuracy_metrics": "classify",
    "ratio_and_se": "estimate",
    "diagnose": "diagnosis",
    "consistency_checks": "diagnosis",
    "_spread": "diagnosis",
    "TABLE_ROWS": "tables",
    "_cell": "tables",
    "format_table": "tables",
    "compare_table": "tables",
    "per_datapoint_dataset": "netcdf",
    "write_netcdf": "netcdf",
    "decode": "plots",
    "prior_sample": "plots",
    "plot_diagnostics": "plots",
}

#: the old module's ``__all__``: ``from ... import *`` still gets them, each with its warning
_OLD_ALL = (
    "CLASSIFIERS",
    "compare_table",
    "decode",
    "diagnose",
    "format_table",
    "per_datapoint_dataset",
    "plot_diagnostics",
    "prior_sample",
    "write_netcdf",
)
__all__ = list(_OLD_ALL)


def __getattr__(name):
    module = MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = f"{__package__}.{module}"
    exported = name in importlib.import_module(__package__).__all__
    warnings.warn(
        f"{__name__}.{name} moved: import it from {new}"
        + (f" or {__package__}" if exported else ""),
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(new), name)


def __dir__():
    return sorted([*globals(), *MOVED])
