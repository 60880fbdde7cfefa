"""Constructor arguments recorded once, for any network class: what `save_pretrained` writes beside the weights.

`@records_init_args` on a class's `__init__` binds each call's arguments to its signature (defaults applied) and
keeps them as `self.config = {"_target_": "<module>.<Class>", **arguments}`, JSON-ready (tuples and other
sequences become lists, mappings dicts), as diffusers' `register_to_config` does: no argument is listed by hand,
so a new argument is recorded without anyone remembering to. A subclass that keeps its parent's `__init__` records
under its own `_target_`; one with its own `__init__` decorates it too (the outermost call's arguments win).
`init_config` does the same binding for any class, undecorated ones included, from the arguments of a config
(the model layer completes a weights file's config with it).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

Init = TypeVar("Init", bound=Callable[..., None])


def plain(value: Any) -> Any:
    """`value` with every mapping a dict and every non-string sequence a list (OmegaConf containers included)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(item) for item in value]
    return value


def target_name(cls: type) -> str:
    """The `_target_` that rebuilds `cls`: its module and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _bound(signature: inspect.Signature, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments of a call by name, defaults applied, `**kwargs` flattened (the first parameter, self, left
    out)."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    self_name = next(iter(signature.parameters))
    arguments: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif name != self_name:
            arguments[name] = value
    return arguments


def init_config(cls: type, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """`{"_target_": cls, **arguments}` with every argument of `cls.__init__` (defaults applied), JSON-ready: how a
    config read from a file that omits defaults is completed, for any class."""
    signature = inspect.signature(getattr(cls, "__init__"))  # noqa: B009 - mypy refuses cls.__init__
    return {"_target_": target_name(cls), **plain(_bound(signature, None, **arguments))}


def records_init_args(init: Init) -> Init:
    """Decorate `__init__` so that the instance records `config = {"_target_": ..., **bound arguments}`."""
    signature = inspect.signature(init)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        raise TypeError(f"{init.__qualname__}: *args cannot be recorded by name; use keyword arguments")

    @functools.wraps(init)
    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        arguments = _bound(signature, self, *args, **kwargs)
        init(self, *args, **kwargs)
        self.config = {"_target_": target_name(type(self)), **plain(arguments)}

    return recording_init  # type: ignore[return-value]
