"""The LightRAG knowledge graph: the store, its crash-safe sessions, extraction, vectors, scope."""

import importlib
import importlib.util
import sys
import types


def _import_lazily(name: str) -> None:
    """Make `import name` return a stand-in module that imports the real one on its first attribute
    access, then holds the real one's attributes (PEP 562's module `__getattr__`; the standard
    LazyLoader is loaded at once by Python 3.11's `import` statement, which reads `__spec__`).
    For pypinyin: lightrag.utils imports it at the top to sort Chinese labels, which mmrag never
    asks for, and its phrase dictionary costs every process that opens the graph ~0.5 s
    (python -X importtime)."""
    if name in sys.modules or importlib.util.find_spec(name) is None:
        return  # loaded already, or not installed (LightRAG then falls back by itself)
    stand_in = types.ModuleType(name, f"{name}, imported on first use (mmrag.graph)")

    def __getattr__(attr: str):
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        stand_in.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__getattr__"})
        return getattr(real, attr)

    stand_in.__getattr__ = __getattr__
    sys.modules[name] = stand_in


_import_lazily("pypinyin")
