"""Training tasks; importing this package registers them (registry name "hero")."""
from minigpt4.tasks.base_task import BaseTask
from minigpt4.tasks.hero_task import HeroTask

__all__ = ["BaseTask", "HeroTask"]
