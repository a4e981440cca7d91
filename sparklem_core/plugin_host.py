"""Finding, loading and calling plugins, with pluggy.

Two sources, one mechanism:

* packages in the plugins directory (``plugins/<name>/__init__.py`` + ``manifest.py``,
  ``server.py``, ``main.py``, ``requirements.txt``); by default ``./plugins`` when the
  current directory has one;
* installed distributions declaring entry points in the group ``sparklem`` (the
  built-in plugins are declared there too, in pyproject.toml).

A plugin found both ways (the built-ins in a checkout) is loaded once. A plugin whose
requirements are missing, that fails to import, or whose hooks are wrong is reported
with its reason and skipped; the others run.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
from packaging.requirements import InvalidRequirement, Requirement

from sparklem_core import PROJECT_NAME, hookspecs
from sparklem_core.plugin_api import NAME_RE, Manifest, Message, PluginResult

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PROJECT_NAME
# The built-ins install as this package (the repository's plugins/ directory); directory
# plugins are imported under it too.
BUILTIN_PACKAGE = "sparklem_plugins"
DEFAULT_PLUGINS_DIR = Path("plugins")  # relative to the current directory
OK = "ok"


@dataclass
class PluginInfo:
    """One discovered plugin, loaded or not."""

    key: str  # directory or entry point name; the manifest name once loaded
    source: str  # "directory plugins/temperature" or "installed sparklem 0.1.0"
    status: str = OK  # ok | disabled | missing requirement X | failed: reason
    manifest: Manifest | None = None
    module: ModuleType | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.key


class PluginHost:
    """The pluggy manager plus what the processor and agent need from it."""

    def __init__(
        self,
        plugins_dir: Path | None,
        enabled: Callable[[str], bool] = lambda _: True,
        *,
        modules: Sequence[ModuleType] = (),
    ):
        """``modules``: load exactly these plugin modules, no discovery (the test kit)."""
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self._callers: dict[str, Any] = {}
        given = [PluginInfo(m.__name__, f"module {m.__name__}", module=m) for m in modules]
        for info in given or self._discover(plugins_dir):
            self._load(info, enabled)
            self.infos.append(info)

    # --- discovery -------------------------------------------------------------

    def _discover(self, plugins_dir: Path | None) -> list[PluginInfo]:
        found: list[PluginInfo] = []
        seen_files: set[Path] = set()
        if plugins_dir is not None and plugins_dir.is_dir():
            for init in sorted(plugins_dir.glob("*/__init__.py")):
                seen_files.add(init.resolve())
                found.append(PluginInfo(init.parent.name, f"directory {init.parent}"))
        # A directory plugin is imported as sparklem_plugins.NAME: an installed package of
        # that name (a built-in) would be the same module, so the directory's copy wins.
        shadowed = {_directory_module_name(init.parent) for init in seen_files}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            origin = _module_origin(ep.module)
            if (origin is not None and origin in seen_files) or ep.module in shadowed:
                continue  # the same package as a directory plugin: load it once
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            info = PluginInfo(ep.name, f"installed {dist} ({ep.value})")
            info.module = ep  # type: ignore[assignment]  # loaded in _load
            found.append(info)
        return found

    def _load(self, info: PluginInfo, enabled: Callable[[str], bool]) -> None:
        if not enabled(info.key):
            info.status = "disabled"
            return
        try:
            if info.source.startswith("directory "):
                directory = Path(info.source.removeprefix("directory "))
                missing = _missing_requirement(directory / "requirements.txt")
                if missing:
                    info.status = f"missing requirement {missing}"
                    return
                module = _import_directory_package(directory)
            elif info.source.startswith("module "):
                module = info.module
            else:
                module = info.module.load()  # type: ignore[union-attr]
            info.module = None
            manifest = self._register(info.key, module)
        except Exception as exc:  # a broken plugin must not stop the others
            info.module = None
            info.status = f"failed: {type(exc).__name__}: {exc}"
            log.warning("plugin %s (%s) skipped: %s", info.key, info.source, info.status)
            return
        duplicate = next((i for i in self.infos if i.ok and i.name == manifest.name), None)
        if duplicate is not None:
            self.pm.unregister(module)
            info.status = f"failed: name {manifest.name!r} already provided by {duplicate.source}"
            log.warning("plugin %s skipped: %s", info.key, info.status)
            return
        info.module, info.manifest, info.key = module, manifest, manifest.name

    def _register(self, key: str, module: ModuleType) -> Manifest:
        self._refuse_undecorated_hooks(module)
        self.pm.register(module, name=f"{key}:{id(module)}")
        self._callers.clear()  # a subset caller would also call plugins registered later
        try:
            self.pm.check_pending()  # a misspelled sparklem_* hook is an error, not a no-op
            manifest = self._call(module, "sparklem_manifest")
            if not isinstance(manifest, Manifest):
                raise TypeError("sparklem_manifest() must return a sparklem_core.Manifest")
            if not NAME_RE.fullmatch(manifest.name):
                raise ValueError(f"plugin name {manifest.name!r} is not [a-z][a-z0-9_]{{0,63}}")
            self._refuse_processor_side_without_process(module, manifest)
        except Exception:
            self.pm.unregister(module)
            raise
        return manifest

    def _refuse_undecorated_hooks(self, module: ModuleType) -> None:
        """pluggy ignores a function without ``@hookimpl``, whatever its name: refuse one
        named like a hook rather than load a plugin whose hook is never called."""
        for name in dir(module):
            value = getattr(module, name)
            if (
                not name.startswith(hookspecs.HOOK_PREFIX)
                or not callable(value)
                or isinstance(value, type)
                or self.pm.parse_hookimpl_opts(module, name) is not None
            ):
                continue
            if name in hookspecs.ALL_HOOKS:
                raise pluggy.PluginValidationError(
                    module,
                    f"{name} is not decorated with @hookimpl, so it would never be called:"
                    " decorate it (from sparklem_core import hookimpl)",
                )
            raise pluggy.PluginValidationError(
                module,
                f"{name} is named like a hook but no hook has that name"
                f" ({', '.join(hookspecs.ALL_HOOKS)}): fix the name, or rename a helper so it"
                f" does not start with {hookspecs.HOOK_PREFIX}",
            )

    def _refuse_processor_side_without_process(
        self, module: ModuleType, manifest: Manifest
    ) -> None:
        """Tables or processor settings without ``sparklem_process``: every message
        would be quarantined as ``processing_error``."""
        hooks = {caller.name for caller in self.pm.get_hookcallers(module) or ()}
        if "sparklem_process" in hooks:
            return
        settings = [s.name for s in manifest.declared("processor")]
        if "sparklem_register_tables" in hooks:
            why = "it has sparklem_register_tables"
        elif settings:
            why = f"it declares processor settings ({', '.join(settings)})"
        else:
            return
        raise pluggy.PluginValidationError(
            module,
            f"{why} but no sparklem_process, so the processor would refuse its every message:"
            " add @hookimpl def sparklem_process(message, settings)",
        )

    # --- calling ---------------------------------------------------------------

    def _call(self, module: ModuleType, hook: str, **kwargs: Any) -> Any:
        """Call one hook of one plugin only (pluggy's subset caller, cached): its result,
        or None when it returned None or does not implement the hook."""
        caller = self._callers.get((id(module), hook))
        if caller is None:
            others = [p for p in self.pm.get_plugins() if p is not module]
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[(id(module), hook)] = caller
        # No hook is firstresult: pluggy answers a list without the None results.
        return next(iter(caller(**kwargs)), None)

    def loaded(self) -> dict[str, PluginInfo]:
        return {i.name: i for i in self.infos if i.ok}

    def register_tables(self, register: Callable[..., Any], forget: Callable[[str], None]) -> None:
        """Let every loaded plugin declare its tables; a clash fails that plugin only."""
        for info in self.infos:
            if not info.ok:
                continue
            try:
                self._call(
                    info.module,
                    "sparklem_register_tables",
                    register=functools.partial(register, info.name),
                )
            except Exception as exc:
                forget(info.name)
                self._fail(info, f"registering tables: {exc}")

    def process(
        self, info: PluginInfo, message: Message, settings: Mapping[str, Any]
    ) -> PluginResult:
        result = self._call(info.module, "sparklem_process", message=message, settings=settings)
        if not isinstance(result, PluginResult):
            raise TypeError(f"sparklem_process returned {type(result).__name__}, not PluginResult")
        return result

    def collect(self, info: PluginInfo, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._call(info.module, "sparklem_collect", settings=settings)

    def _fail(self, info: PluginInfo, reason: str) -> None:
        info.status = f"failed: {reason}"
        log.warning("plugin %s (%s) skipped: %s", info.name, info.source, reason)
        if info.module is not None:
            self.pm.unregister(info.module)


def _module_origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin).resolve() if spec and spec.origin else None


def default_plugins_dir() -> Path | None:
    """``./plugins`` when the current directory has one (a checkout, a deployment)."""
    return DEFAULT_PLUGINS_DIR.resolve() if DEFAULT_PLUGINS_DIR.is_dir() else None


def _directory_module_name(directory: Path) -> str:
    return f"{BUILTIN_PACKAGE}.{directory.name}"


def _import_directory_package(directory: Path) -> ModuleType:
    name = _directory_module_name(directory)
    init = directory / "__init__.py"
    cached = sys.modules.get(name)
    if cached is not None:
        if cached.__file__ and Path(cached.__file__).resolve() == init.resolve():
            return cached
        _forget_modules(name)  # same name, another directory: not the code asked for
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(directory)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec, so the package's relative imports resolve
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _forget_modules(name)  # with the submodules it did import: a retry starts afresh
        raise
    return module


def _forget_modules(name: str) -> None:
    for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[loaded]


def _missing_requirement(requirements: Path) -> str | None:
    """The first requirement in ``requirements.txt`` that is not installed, if any."""
    if not requirements.exists():
        return None
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"\s+#.*", "", line).strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return f"{line!r} (unparsable requirement)"
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return str(req)
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            return f"{req} (found {version})"
    return None
