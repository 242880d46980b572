"""Every exception class our packages define, for tests that pin exit codes and wire codes."""

from __future__ import annotations

import importlib
import pkgutil

import drivers
import ingestd
import store


def error_classes() -> list[type[Exception]]:
    """Each exception class defined in `store`, `drivers` or `ingestd` (the simulator left out), once,
    in the module that defines it."""
    found: dict[str, type[Exception]] = {}
    for package in (store, drivers, ingestd):
        for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".simulator" in module_info.name or module_info.name.endswith("__main__"):
                continue
            module = importlib.import_module(module_info.name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, Exception)
                    and value.__module__ == module.__name__
                ):
                    found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]
