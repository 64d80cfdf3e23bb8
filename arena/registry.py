"""Load plugins (entry points of the ``arena`` group, then explicit modules) and index them by kind and name.

Laid out as datasette and tox do it: one ``PluginManager("arena")``, the hookspecs added, entry points loaded,
``check_pending()`` so a misspelt hook fails loudly, then each register hook collected into one ``Registry``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, TypeVar, cast

import pluggy

from arena import hookspecs
from arena.errors import ArenaError
from arena.kinds import KINDS, Plugin, first_sentence
from arena.version import DISTRIBUTION

log = logging.getLogger(__name__)
P = TypeVar("P", bound=Plugin)

ENTRY_POINT_GROUP = "arena"
#: Set to 1 to load only the arena's own plugins, as ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` does for pytest.
AUTOLOAD_ENV = "ARENA_DISABLE_PLUGIN_AUTOLOAD"
_REGISTER_HOOKS = {kind: f"arena_register_{kind}s" for kind in KINDS}
#: The hooks called during a run, which reporters implement.
REPORTER_HOOKS = tuple(name for name in vars(hookspecs) if name.startswith("arena_")
                       and name not in _REGISTER_HOOKS.values())


class PluginError(ArenaError):
    """A plugin could not be loaded or registered, or a name is unknown or claimed twice."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin class and where it came from."""

    kind: str
    name: str
    cls: type[Plugin]
    provider: str
    package: str | None
    version: str | None

    @cached_property
    def code_hash(self) -> str:
        """A hash of the file defining the plugin, so results computed by older plugin code are not reused."""
        return source_hash(inspect.getfile(self.cls))

    @property
    def source(self) -> str:
        """``provider (package version)``, the way listings and clash errors name a plugin's origin."""
        dist = f" ({self.package} {self.version})" if self.package else ""
        return f"{self.provider}{dist}"


@dataclass(frozen=True)
class ReporterInfo:
    """One registered module (or object) implementing reporter hooks, and where it came from."""

    name: str
    hooks: tuple[str, ...]
    description: str
    package: str | None
    version: str | None


class Ref(Protocol):
    """What names a plugin in a scenario: its ``name`` and validated ``params`` (``arena.scenario.PluginRef``)."""

    @property
    def name(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Ref)


@dataclass
class Registry:
    """Every registered plugin, by kind then name, plus the entry points that failed to load."""

    plugins: dict[str, dict[str, PluginInfo]] = field(default_factory=lambda: {kind: {} for kind in KINDS})
    load_errors: list[str] = field(default_factory=list)
    #: The distribution (name, version) of each plugin loaded from an entry point, by its name.
    origins: dict[str, tuple[str, str]] = field(default_factory=dict)
    pm: pluggy.PluginManager = field(default_factory=lambda: make_manager(), repr=False)

    def notify(self, event: str, **kwargs: Any) -> None:
        """Call every ``arena_<event>`` reporter hook; one that raises is logged and the others still run."""
        for impl in getattr(self.pm.hook, f"arena_{event}").get_hookimpls():
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception:
                log.warning("reporter %s failed in arena_%s:\n%s", impl.plugin_name, event, traceback.format_exc())

    def add(self, info: PluginInfo) -> None:
        """Index ``info``; a second plugin of the same kind and name is an error naming both providers."""
        existing = self.plugins[info.kind].get(info.name)
        if existing is not None:
            raise PluginError(
                f"{info.kind} {info.name!r} is registered twice: by {existing.source} and by {info.source}; "
                f"rename one of them or block one plugin"
            )
        self.plugins[info.kind][info.name] = info

    def get(self, kind: str, name: str) -> PluginInfo:
        """The plugin ``name`` of ``kind``; an unknown name gets a "did you mean" answer."""
        try:
            return self.plugins[kind][name]
        except KeyError:
            raise PluginError(unknown_name_message(kind, name, self.names(kind))) from None

    def build(self, kind: type[P], ref: Ref | str, *args: Any) -> P:
        """An instance of the plugin of ``kind`` (``Model``, ``Attack``, ...) that a scenario entry names, with its
        validated parameters; ``args`` go first (an attack's ``model`` and ``threat``)."""
        name, params = (ref, {}) if isinstance(ref, str) else (ref.name, ref.params)
        return cast(P, self.get(kind.kind, name).cls(*args, **params))  # registering checked it is a ``kind``

    def training_stages(self, chain: Iterable[R]) -> list[R]:
        """The training-time defenses of a defense chain (validation allows at most one)."""
        return [ref for ref in chain if getattr(self.get("defense", ref.name).cls, "stage", None) == "training"]

    def reporters(self) -> list[ReporterInfo]:
        """Every registered module implementing reporter hooks (``arena_run_started`` ...), by name."""
        found = []
        for plugin in self.pm.get_plugins():
            name = self.pm.get_name(plugin) or ""
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or () if h.name in REPORTER_HOOKS)
            package, version = self.origins.get(name) or (None, None)
            if hooks:
                found.append(ReporterInfo(name, tuple(hooks), first_sentence(inspect.getdoc(plugin)), package, version))
        return sorted(found, key=lambda info: info.name)

    def names(self, kind: str) -> list[str]:
        return sorted(self.plugins[kind])

    def __iter__(self) -> Iterator[PluginInfo]:
        for kind in KINDS:
            yield from (self.plugins[kind][name] for name in self.names(kind))


def source_hash(path: str | Path) -> str:
    """A short hash of a source file, for keys that must change when the code behind a result changes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def unknown_name_message(what: str, name: str, known: Iterable[str], suggestions: int = 1,
                         list_known: bool = True) -> str:
    """``unknown attack 'fsgm'; did you mean 'fgsm'? (known: fgsm, pgd)``: up to ``suggestions`` close names, then
    the known names, or only their number (``list_known=False``, for a library's long list)."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=suggestions)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    listed = f"known: {', '.join(known) or 'none'}" if list_known else f"{len(known)} known"
    return f"unknown {what} {name!r}{hint} ({listed})"


def make_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, blocked: set[str], errors: list[str]) -> dict[str, tuple[str, str]]:
    """Register every entry point of the group; one that fails to import is reported (once, even when its
    distribution is found twice on the path), the others still load."""
    builtin_only = os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0")
    dists: dict[str, tuple[str, str]] = {}
    tried: set[str] = set()
    for dist in importlib.metadata.distributions():
        package = dist.metadata["Name"]
        if builtin_only and package != DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in blocked or ep.name in tried:
                continue
            tried.add(ep.name)
            try:
                pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                errors.append(f"entry point {ep.name} = {ep.value} ({package}): {type(exc).__name__}: {exc}")
                continue
            dists[ep.name] = (package, dist.version)
    return dists


def _import(module: str) -> ModuleType:
    """Import a dotted module path (installed, else from the current folder, as ``python -m`` finds one), or a ``.py``
    file named explicitly."""
    if not module.endswith(".py"):
        top = module.partition(".")[0]
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            here = Path.cwd()
            if exc.name != top:
                raise
            if not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
                raise ModuleNotFoundError(f"no module named {top!r} is installed or in the current folder {here}",
                                          name=top) from None
        sys.path.insert(0, str(here))  # kept, so the module's own later imports of its neighbours work too
        return importlib.import_module(module)
    path = Path(module)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    spec = importlib.util.spec_from_file_location(f"arena_local_{path.stem}", path)
    assert spec is not None and spec.loader is not None, "a .py file always has a spec and a loader"
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def load_registry(modules: Iterable[str | ModuleType | object] = (), blocked: Iterable[str] = ()) -> Registry:
    """Build the registry from the ``arena`` entry points plus ``modules`` (import paths, ``.py`` files, modules, or
    any object with ``@hookimpl`` methods).

    ``blocked`` names entry points or modules not to load, as pytest's ``-p no:NAME``.
    """
    blocked = set(blocked)
    registry = Registry()
    pm = registry.pm
    registry.origins = _load_entry_points(pm, blocked, registry.load_errors)
    for module in modules:
        if not isinstance(module, str):
            name = getattr(module, "__name__", type(module).__name__)
        else:
            name = Path(module).stem if module.endswith(".py") else module
        if name in blocked or pm.has_plugin(name):
            continue
        try:
            loaded = _import(module) if isinstance(module, str) else module
        except Exception as exc:
            raise PluginError(f"cannot load plugin module {module!r}: {type(exc).__name__}: {exc}") from exc
        if pm.is_registered(loaded):
            raise PluginError(f"plugin module {name!r} is already loaded as the entry point "
                              f"{pm.get_name(loaded)!r}; remove it from the plugins to load")
        try:
            pm.register(loaded, name=name)
        except Exception as exc:
            raise PluginError(f"cannot register plugin module {module!r}: {type(exc).__name__}: {exc}") from exc
    pm.check_pending()

    for kind, hook_name in _REGISTER_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            origin = registry.origins.get(impl.plugin_name, (None, None))
            kwargs = {"register": _registrar(registry, kind, impl.plugin_name, *origin)}
            impl.function(*(kwargs[arg] for arg in impl.argnames))  # as pluggy calls an implementation
    return registry


def _registrar(
    registry: Registry, kind: str, provider: str, package: str | None, version: str | None
) -> Callable[[type[Plugin]], None]:
    """The ``register`` callable one plugin's register hook of ``kind`` receives."""
    base = KINDS[kind]

    def register(cls: type[Plugin]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)) or not getattr(cls, "name", None):
            raise PluginError(
                f"plugin {provider!r} registered {cls!r} as a {kind}: "
                f"register a subclass of arena.{base.__name__} with a class attribute `name`"
            )
        registry.add(PluginInfo(kind, cls.name, cls, provider, package, version))

    return register
