"""Targets as data: one TOML file per built-in target in this folder, or a user's own file.

For now a target names its ISA features and devices; the kernel tables, compiler flags and
qemu machines arrive with the targets issue and extend the same files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import QCError

_DIR = os.path.dirname(__file__)


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    features: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)
    backend: str = "onnx"
    data: dict = field(default_factory=dict, compare=False, repr=False)


def builtin_targets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(_DIR) if f.endswith(".toml"))


def load_target(name_or_path: str) -> Target:
    """A built-in target by name, or a target file (``./my-soc.toml``)."""
    if name_or_path.endswith(".toml") or os.sep in name_or_path:
        path = name_or_path
        if not os.path.isfile(path):
            raise QCError("no such target file", where=path)
    else:
        path = os.path.join(_DIR, f"{name_or_path}.toml")
        if not os.path.isfile(path):
            raise QCError(f"unknown target '{name_or_path}'",
                          hint="known targets: " + ", ".join(builtin_targets()) + " (or a path to a .toml file)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise QCError(f"cannot read target: {e}", where=path) from None
    try:
        return Target(name=data["name"], description=data.get("description", ""),
                      features=tuple(data.get("features", ())), devices=tuple(data.get("devices", ("cpu",))),
                      backend=data.get("backend", "onnx"), data=data)
    except KeyError as e:
        raise QCError(f"target file lacks the key {e}", where=path) from None
