"""HERO: Hierarchical Evidence-based Reasoning and Observation for multimodal emotion understanding.

`import minigpt4` is light; `minigpt4.setup_registry()` imports the modules that register
models, dataset builders, tasks, runners and schedulers (they pull torch/transformers).
"""
from minigpt4.common.registry import registry

__all__ = ["registry", "setup_registry"]


def setup_registry() -> None:
    """Import every module that registers something, so names resolve from configs."""
    import minigpt4.common.optims  # noqa: F401  (lr schedulers)
    import minigpt4.datasets.builders  # noqa: F401
    import minigpt4.models  # noqa: F401
    import minigpt4.runners  # noqa: F401
    import minigpt4.tasks  # noqa: F401
