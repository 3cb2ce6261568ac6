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


# Pyro's optimizers key their states by parameter names, which carry the module's
# process-unique suffix; checkpoints store the canonical names.
def optimizer_state(optimizer) -> dict:
    """``optimizer.get_state()``, a Pyro optimizer's keyed by :func:`canonical_name`."""
    state = optimizer.get_state()
    if _is_pyro_optim(optimizer):
        state = {canonical_name(name): value for name, value in state.items()}
    return state


def set_optimizer_state(optimizer, state, *modules) -> None:
    """The inverse of :func:`optimizer_state`: canonical names mapped back to those that
    ``modules`` (the model and guide) carry in this process."""
    if _is_pyro_optim(optimizer):
        prefixes = {
            canonical_name(m._pyro_name): m._pyro_name
            for m in modules
            if getattr(m, "_pyro_name", "")
        }

        def actual(name):
            for base, prefix in prefixes.items():
                if name == base or name.startswith((base + ".", base + "$")):
                    return prefix + name[len(base) :]
            return name

        state = {actual(name): value for name, value in state.items()}
    optimizer.set_state(state)


def _is_pyro_optim(optimizer) -> bool:
    import pyro.optim

    return isinstance(optimizer, pyro.optim.PyroOptim)
