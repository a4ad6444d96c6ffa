"""Name -> class registry, so configs can say `arch: hero` instead of importing code.

Kinds: model, builder (datasets), task, runner, lr_scheduler. Looking up an
unknown name raises a KeyError that lists what is registered, which is the error a user
with a typo in a YAML file needs to see.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Type

KINDS = ("model", "builder", "task", "runner", "lr_scheduler")


class Registry:
    """A table of named classes per kind."""

    def __init__(self) -> None:
        self._tables: Dict[str, Dict[str, Any]] = {kind: {} for kind in KINDS}

    # ---------------------------------------------------------------- generic
    def register(self, kind: str, name: str) -> Callable[[Any], Any]:
        """Decorator: `@registry.register("model", "hero")`."""
        table = self._table(kind)

        def wrap(cls: Any) -> Any:
            if name in table and table[name] is not cls:
                raise KeyError(f"{kind} name {name!r} is already registered to {table[name]!r}")
            table[name] = cls
            return cls

        return wrap

    def get(self, kind: str, name: str) -> Any:
        table = self._table(kind)
        if name not in table:
            known = ", ".join(sorted(table)) or "(none)"
            raise KeyError(f"unknown {kind} {name!r}; registered {kind}s: {known}")
        return table[name]

    def list(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def _table(self, kind: str) -> Dict[str, Any]:
        if kind not in self._tables:
            raise KeyError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
        return self._tables[kind]

    # ------------------------------------------------- MiniGPT-4 style helpers
    def register_model(self, name: str) -> Callable[[Type], Type]:
        return self.register("model", name)

    def register_builder(self, name: str) -> Callable[[Type], Type]:
        return self.register("builder", name)

    def register_task(self, name: str) -> Callable[[Type], Type]:
        return self.register("task", name)

    def register_runner(self, name: str) -> Callable[[Type], Type]:
        return self.register("runner", name)

    def register_lr_scheduler(self, name: str) -> Callable[[Type], Type]:
        return self.register("lr_scheduler", name)

    def get_model_class(self, name: str) -> Type:
        return self.get("model", name)

    def get_builder_class(self, name: str) -> Type:
        return self.get("builder", name)

    def get_task_class(self, name: str) -> Type:
        return self.get("task", name)

    def get_runner_class(self, name: str) -> Type:
        return self.get("runner", name)

    def get_lr_scheduler_class(self, name: str) -> Type:
        return self.get("lr_scheduler", name)


registry = Registry()
