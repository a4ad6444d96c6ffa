"""Registry: registration and lookup per kind, helpful errors, and the real registrations."""
from __future__ import annotations

import pytest

from minigpt4.common.registry import KINDS, Registry, registry


def test_register_and_lookup_every_kind():
    reg = Registry()
    for kind in KINDS:
        cls = type(f"C_{kind}", (), {})
        getattr(reg, f"register_{kind}")("thing")(cls)
        assert getattr(reg, f"get_{kind}_class")("thing") is cls
        assert reg.list(kind) == ["thing"]


def test_unknown_name_lists_registered_names():
    reg = Registry()
    reg.register_model("hero")(type("A", (), {}))
    reg.register_model("alpha")(type("B", (), {}))
    with pytest.raises(KeyError) as exc:
        reg.get_model_class("heor")
    msg = str(exc.value)
    assert "'heor'" in msg and "alpha, hero" in msg
    with pytest.raises(KeyError, match=r"registered tasks: \(none\)"):
        reg.get_task_class("hero")


def test_duplicate_name_is_rejected_but_reregistering_same_class_is_fine():
    reg = Registry()
    a, b = type("A", (), {}), type("B", (), {})
    reg.register_builder("x")(a)
    reg.register_builder("x")(a)  # module imported twice: harmless
    with pytest.raises(KeyError, match="already registered"):
        reg.register_builder("x")(b)


def test_unknown_kind():
    with pytest.raises(KeyError, match="unknown registry kind 'optimizer'"):
        Registry().get("optimizer", "adamw")


def test_setup_registry_registers_framework_names():
    import minigpt4

    minigpt4.setup_registry()
    assert "runner_base" in registry.list("runner")
    assert "hero" in registry.list("task")
    assert {"linear_warmup_cosine_lr", "constant_lr"} <= set(registry.list("lr_scheduler"))
    assert "hero_dataset" in registry.list("builder")
