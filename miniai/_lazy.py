"""Lazy re-exports: a package lists `name -> module` once, and each module is imported when a name is first used.

So `import miniai` costs next to nothing beyond torch, and a script that never plots never imports matplotlib
(PEP 562 module `__getattr__`). `from miniai import *` still brings every name: it asks for each in `__all__`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, importing `package + table[name]` the first time `name` is used."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        namespace[name] = value  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))
    return __getattr__, __dir__
