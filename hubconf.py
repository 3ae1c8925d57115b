"""torch.hub entry points (https://pytorch.org/docs/stable/hub.html): a trained run as a ready embedder.

    import torch
    sv = torch.hub.load("/path/to/voiceprint", "embedder", checkpoint="exp/NAME", source="local")
    sv.embed("a.wav"); sv.embed(wave, sample_rate=16000); sv.verify("a.wav", "b.wav")

The API is api.SpeakerEmbedder (its docstring). The project's modules have flat names (config, utils, data,
models, ...) that a user's own project may use too, and torch.hub imports this file with the repository put
first on sys.path: a plain `import api` would then mix this project's modules with the user's already
imported ones. So the project is loaded as a private package instead, `_voiceprint_<hash of its folder>`,
whose modules see each other under their flat names through their own `__import__` (each module's
`__builtins__`), while every other module of the process keeps seeing the user's: nothing named config,
utils, data, models, ... enters or leaves sys.modules.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

dependencies = ["torch", "numpy", "scipy", "soundfile", "yaml", "tqdm", "matplotlib"]

_ROOT = Path(__file__).resolve().parent
_PACKAGE = "_voiceprint_" + hashlib.sha1(str(_ROOT).encode()).hexdigest()[:10]
# The project's top-level names: its modules and packages (the flat layout: train.py, config.py, data/, ...)
_NAMES = frozenset({p.stem for p in _ROOT.glob("*.py") if p.stem != "hubconf"}
                   | {p.parent.name for p in _ROOT.glob("*/__init__.py")})


def embedder(checkpoint: str, device: str = "auto", **settings: object) -> object:
    """A ready api.SpeakerEmbedder of `checkpoint` (a checkpoint file or a run folder, relative to the current
    directory) on `device` (auto | cpu | cuda | cuda:N). `settings`: the Config fields inference.py takes,
    e.g. precision="fp32", eval_crops=10, runtime="onnx"."""
    return _project("api").SpeakerEmbedder(checkpoint, device=device, **settings)


def _import(name: str, globals: dict | None = None, locals: dict | None = None, fromlist: tuple = (),
            level: int = 0) -> ModuleType:
    """The project modules' __import__: a project name (`utils`, `data.audio`) is its private module; any other
    import is the ordinary one."""
    top = name.partition(".")[0]
    if level or top not in _NAMES:
        return builtins.__import__(name, globals, locals, fromlist, level)
    module = builtins.__import__(f"{_PACKAGE}.{name}", globals, locals, fromlist, 0)
    return module if fromlist else sys.modules[f"{_PACKAGE}.{top}"]  # `import data.audio` binds `data`


_BUILTINS = {**vars(builtins), "__import__": _import}


class _Loader(importlib.abc.Loader):
    """The file's own loader, with the module's builtins replaced before its code runs."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__builtins__ = _BUILTINS
        self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the private package's modules in the repository, loaded by _Loader."""

    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if not name.startswith(_PACKAGE + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def _project(module: str) -> ModuleType:
    """The project module `module` under the private package (created, with its finder, on first use)."""
    if _PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(_ROOT)]
        sys.modules[_PACKAGE] = importlib.util.module_from_spec(spec)
        sys.meta_path.insert(0, _Finder())
    return importlib.import_module(f"{_PACKAGE}.{module}")
