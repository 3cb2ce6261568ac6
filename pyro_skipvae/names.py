"""Process-unique Pyro names, so two models never share a parameter by accident.

Pyro keeps parameters in one global store keyed by name. A :class:`~pyro.nn.PyroModule`
registers its parameters there under its own name, and a second module of the same name
would be handed the first one's tensors (Pyro's store wins over the module). Every
:class:`~pyro_skipvae.Model` and :class:`~pyro_skipvae.Guide` therefore takes a name that is
unique in the process: ``model``, ``model_1``, ``model_2``, ... Checkpoints never store these
names (optimizer states are keyed by :func:`canonical_name`), so a run resumes whatever name
its modules got in the new process.
"""

import itertools
import re
import weakref

import pyro

_counters: dict[str, itertools.count] = {}
_SUFFIX = re.compile(r"^(?P<base>[^.$]+)_\d+(?=$|[.$])")


def unique_name(base: str) -> str:
    """``base`` the first time, then ``base_1``, ``base_2``, ... within this process."""
    n = next(_counters.setdefault(base, itertools.count()))
    return base if n == 0 else f"{base}_{n}"


def canonical_name(param_name: str) -> str:
    """A parameter's store name without the instance suffix: ``model_3.decoder$$$w`` →
    ``model.decoder$$$w``."""
    return _SUFFIX.sub(r"\g<base>", param_name)


def forget_params_when_collected(module, prefix: str) -> None:
    """Drop the parameters named ``prefix...`` from Pyro's store once ``module`` is garbage
    collected, so the store does not keep every model a process ever built alive."""
    weakref.finalize(module, _forget, prefix)


def _forget(prefix: str) -> None:
    store = pyro.get_param_store()
    for name in [
        n for n in store.keys() if n == prefix or n.startswith((prefix + ".", prefix + "$"))
    ]:
        del store[name]
