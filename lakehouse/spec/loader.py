"""Loading a pipeline by reference: a name, ``module:attr``, ``module``, or a path to a Python file (``path.py`` or
``path.py:attr``).

Names come from the project's configuration (``[pipelines]`` in ``lakehouse.toml``: name -> reference) and from the
examples that ship with the engine (``tpch``, ``events``). A module or file without ``:attr`` must hold one
:class:`~lakehouse.spec.declare.Pipeline` (``PIPELINE`` when it holds several). The directory a pipeline file's
project lives in (``project_dir``, else the file's own directory) goes on ``sys.path``, so the file can import its
models (``from schemas.events import Event``) and so can the Ray workers this process starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from lakehouse.errors import ConfigError
from lakehouse.spec.declare import Pipeline

EXAMPLES = {"tpch": "examples.tpch.pipeline:PIPELINE", "events": "examples.events.pipeline:PIPELINE"}
# Pipelines already validated, by identity: a module is imported once, and its pipeline checked once.
_validated: dict[int, Pipeline] = {}


def load(reference: str, *, project_dir: str | None = None, names: Mapping[str, str] | None = None) -> Pipeline:
    """The validated pipeline ``reference`` names (see the module doc)."""
    found = _load(reference, project_dir, dict(names or {}))
    if id(found) not in _validated:
        _validated[id(found)] = found.validate()
    return found


def _load(reference: str, project_dir: str | None, names: dict[str, str]) -> Pipeline:
    if project_dir:
        _on_path(project_dir)
    target = names.get(reference) or EXAMPLES.get(reference) or reference
    where, _, attr = target.partition(":")
    if where.endswith(".py") or "/" in where:
        module = _import_file(Path(project_dir or ".") / where if not Path(where).is_absolute() else Path(where),
                              reference, project_dir)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name and where.startswith(e.name) and reference == target:
                known = ", ".join(sorted({*names, *EXAMPLES}))
                raise ConfigError(f"unknown pipeline {reference!r}: not a name (known: {known}), a module or a .py "
                                  "file") from None
            raise ConfigError(f"pipeline {reference!r}: module {where} does not import: {_describe(e)}") from e
        except Exception as e:
            raise ConfigError(f"pipeline {reference!r}: module {where} does not import: {_describe(e)}") from e
    return _pipeline_in(module, attr, reference)


def _on_path(directory: str) -> None:
    path = str(Path(directory).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _import_file(path: Path, reference: str, project_dir: str | None) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"pipeline {reference!r}: no such file {path}")
    # Importable by a dotted name under the project (pipelines/events.py -> pipelines.events) where possible, so
    # that Ray workers, which get this process's sys.path, import the same module by name.
    base = Path(project_dir).resolve() if project_dir else path.parent
    _on_path(str(base))
    try:
        parts = path.with_suffix("").relative_to(base).parts
    except ValueError:
        _on_path(str(path.parent))
        parts = (path.stem,)
    name = ".".join(parts)
    _check_not_taken(parts[0], base, path)
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise ConfigError(f"pipeline file {path} does not import: {_describe(e)}") from e
    if Path(getattr(module, "__file__", "") or "").resolve() != path:
        raise ConfigError(f"pipeline file {path} imports as module {name}, which is another file "
                          f"({getattr(module, '__file__', None)}): rename it or its directory")
    return module


def _check_not_taken(top: str, base: Path, path: Path) -> None:
    """The file's top-level package name must be the project's, not an installed or standard module's."""
    found = sys.modules.get(top)
    spec = found.__spec__ if found is not None else importlib.util.find_spec(top)
    if spec is None:
        return
    places = [spec.origin] if spec.origin and spec.origin != "namespace" else []
    places += list(spec.submodule_search_locations or [])
    if places and not any(Path(p).resolve().is_relative_to(base) for p in places if p):
        raise ConfigError(f"pipeline file {path} would import as {top}, which is already the module {places[0]}: "
                          f"rename the file or its directory (or give the directory an __init__.py)")


def _describe(error: BaseException) -> str:
    """The error and where in the user's file it happened (the innermost frame)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    if isinstance(error, SyntaxError):
        where = f" ({error.filename}, line {error.lineno})"
    return f"{type(error).__name__}: {error}{where}"


def _pipeline_in(module: ModuleType, attr: str, reference: str) -> Pipeline:
    if attr:
        if not hasattr(module, attr):
            raise ConfigError(f"pipeline {reference!r}: {module.__name__} has no attribute {attr!r}")
        found = getattr(module, attr)
        if not isinstance(found, Pipeline):
            raise ConfigError(f"pipeline {reference!r}: {module.__name__}.{attr} is a {type(found).__name__}, not a "
                              "Pipeline")
        return found
    pipelines = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if "PIPELINE" in pipelines:
        return pipelines["PIPELINE"]
    if len(pipelines) != 1:
        what = "no Pipeline" if not pipelines else f"several pipelines ({', '.join(sorted(pipelines))})"
        raise ConfigError(f"pipeline {reference!r}: {module.__name__} holds {what}; name one as module:attr")
    return next(iter(pipelines.values()))
