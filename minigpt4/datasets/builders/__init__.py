"""Dataset builders; importing this package registers them (registry name "hero_dataset")."""
from minigpt4.datasets.builders.hero_builder import HEROBuilder

__all__ = ["HEROBuilder"]
