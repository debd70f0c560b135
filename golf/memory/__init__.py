"""Memory mechanisms, one file each, behind the interface in golf/memory/base.py.

Nothing is imported eagerly (no work at import time, no import cycles with the backbone);
`load_all()` imports every mechanism so that its @register decorator runs.
"""
import importlib

# module names under golf/ whose import registers mixers / mechanisms
MODULES = (
    "golf.attention",  # "attn" (the backbone's own attention)
    "golf.memory.memory_tokens",
    "golf.memory.persistent",
    "golf.memory.sliding_window",
    "golf.memory.weight_tied",
    "golf.memory.stream",
    "golf.memory.deltanet",
    "golf.memory.hypermixing",
)


def load_all() -> None:
    for name in MODULES:
        importlib.import_module(name)
