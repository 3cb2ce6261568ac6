"""A diagnose() result's per-datapoint tensors as an xarray Dataset, written as netCDF.

The file holds one variable per per-datapoint result (dimension ``datapoint``, plus
``latent_dim`` for per-dimension values and ``particle`` for kept log-weights) and the
scalar metrics as attributes; :func:`write_netcdf` writes it atomically.
"""

from ..checkpoint import atomic_path


def per_datapoint_dataset(result, *, attrs=None):
    """The per-datapoint tensors of a :func:`~pyro_skipvae.diagnostics.diagnose` result as
    an :class:`xarray.Dataset` (dimensions ``datapoint``, ``latent_dim`` and, if kept,
    ``particle``)."""
    import xarray as xr

    dims = {1: ("datapoint",), 2: ("datapoint", "latent_dim")}
    variables = {}
    for name, value in result["per_datapoint"].items():
        value = value.detach().cpu()
        d = ("datapoint", "particle") if name == "log_weights" else dims[value.dim()]
        variables[name] = (d, value.numpy())
    metrics = result["metrics"]
    plain = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }
    return xr.Dataset(variables, attrs={**plain, **(attrs or {})})


def write_netcdf(dataset, path) -> None:
    """Write an xarray Dataset as netCDF4 (h5netcdf engine) atomically."""
    with atomic_path(path) as tmp:
        dataset.to_netcdf(tmp, engine="h5netcdf")
