"""One generic registry, used for methods, tasks and models.

Plugins register with a decorator (``@register_method("lora")``); packages outside this repository
are discovered through entry points (group ``peft_bench.methods`` and friends) and loaded lazily,
the first time a name is looked up or the registry is listed.

A plugin that cannot be loaded (its module is missing, raises on import, ...) fails alone: it is
reported once, in one line naming its distribution, entry point and error, listed as broken,
and only looking it up (a suite that names it) is an error; every other name keeps working.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import entry_points
from typing import Callable, Generic, Iterator, TypeVar

from peft_bench.core.config import UnknownName

T = TypeVar("T")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


class Registry(Generic[T]):
    """A name -> object mapping with duplicate checks, suggestions and entry-point discovery."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False
        self.broken: dict[str, str] = {}  # entry-point name -> why it could not be loaded
        self._providers: list[Callable[[], dict[str, T]]] = []
        self._families: dict[str, Callable[[str], T]] = {}
        self._listings: dict[str, Callable[[], list[str]]] = {}

    def add_provider(self, provide: Callable[[], dict[str, T]]) -> None:
        """Register a source of names computed when they are looked up (e.g. one method per type
        in peft's own registry, so a type registered there later appears here too). Names added
        directly take precedence over provided ones."""
        self._providers.append(provide)

    def _provided(self) -> dict[str, T]:
        out: dict[str, T] = {}
        for provide in self._providers:
            for name, obj in provide().items():
                if name not in self._items:
                    out.setdefault(name, obj)
        return out

    def add_family(self, prefix: str, resolve: Callable[[str], T], listing: Callable[[], list[str]] | None = None) -> None:
        """Names ``prefix:REST`` resolved on demand by ``resolve(REST)`` (which raises UnknownName
        for a REST it does not know): a family too large to list eagerly, or whose data is
        fetched only when one of its names is first used (BIG-bench's tasks). They are not in
        ``names()``; ``listing()`` gives the lines of ``peftbench list --tasks PREFIX``."""
        self._families[prefix] = resolve
        self._listings[prefix] = listing or (lambda: [])

    def family_listing(self, prefix: str) -> list[str]:
        """The lines listing the family ``prefix`` (UnknownName naming the families there are)."""
        self.load_entry_points()
        if prefix not in self._families:
            raise UnknownName(f"unknown {self.kind} family {prefix!r}. Valid choices: {', '.join(sorted(self._families)) or '(none)'}.")
        return self._listings[prefix]()

    def families(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._families)

    def family(self, name: str) -> tuple[str, Callable[[str], T]] | None:
        prefix, sep, _ = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not sep:
            return None
        self.load_entry_points()
        return (prefix, self._families[prefix]) if prefix in self._families else None

    # -- registration -------------------------------------------------------------------------
    def add(self, name: str, obj: T) -> T:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(
                f"{self.kind} name must be lowercase letters, digits, '_' or '-' and start with a "
                f"letter, got {name!r}."
            )
        if name in self._items and self._items[name] is not obj:
            raise UnknownName(f"{self.kind} {name!r} is already registered (by {self._items[name]!r}).")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@registry.register("name")``."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            try:
                obj.name = name  # type: ignore[attr-defined]  # one name everywhere
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    # -- lookup --------------------------------------------------------------------------------
    def load_entry_points(self, warn: bool = True) -> None:
        """Load every entry point of the group once; a broken one is recorded in ``broken`` (and,
        ``warn``, reported in one line on stderr)."""
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()  # importing the module usually registers it through the decorator
                if ep.name not in self._items:
                    self.add(ep.name, obj)
            except Exception as e:  # noqa: BLE001 - one broken plugin must not break the others
                dist = getattr(ep, "dist", None)
                where = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
                first = (str(e).strip().splitlines() or [""])[0][:200]
                self.broken[ep.name] = (f"{self.kind} plugin {ep.name!r} (entry point `{ep.name} = {ep.value}` "
                                        f"in group {self.entry_point_group}, from {where}) cannot be loaded: "
                                        f"{type(e).__name__}: {first}")
                if warn:
                    print(f"peftbench: warning: {self.broken[ep.name]}; it is left out.", file=sys.stderr)

    def get(self, name: str) -> T:
        if (fam := self.family(name)) is not None:
            return fam[1](name.partition(":")[2])
        if name not in self._items:
            self.load_entry_points()
        if name not in self._items and self._providers:
            provided = self._provided()
            if name in provided:
                return provided[name]
        if name not in self._items and name in self.broken:
            raise UnknownName(self.broken[name] + ".")
        if name not in self._items:
            from peft_bench.core.config import did_you_mean

            choices = self.names()
            raise UnknownName(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, choices)} Valid choices: {', '.join(choices)}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted({*self._items, *self._provided()})

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        if isinstance(name, str) and (fam := self.family(name)) is not None:
            try:
                fam[1](name.partition(":")[2])
                return True
            except UnknownName:
                return False
        return name in self._items or name in self._provided()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


METHODS: Registry = Registry("method", entry_point_group="peft_bench.methods")
TASKS: Registry = Registry("task", entry_point_group="peft_bench.tasks")
MODELS: Registry = Registry("model", entry_point_group="peft_bench.models")

register_method = METHODS.register
register_task = TASKS.register
register_model = MODELS.register


BUILTIN_PLUGIN_PACKAGES = ("peft_bench.methods", "peft_bench.tasks")
BUILTIN_MODELS = "peft_bench.assets.models"  # registers the packaged models


def load_builtin_plugins() -> None:
    """Import the built-in method, task and model modules so that their decorators run (by name:
    the registry imports no plugin module itself)."""
    import importlib
    import pkgutil

    for pkg in map(importlib.import_module, BUILTIN_PLUGIN_PACKAGES):
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
    importlib.import_module(BUILTIN_MODELS)
