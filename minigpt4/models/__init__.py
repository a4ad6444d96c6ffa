"""Model registration: importing this package registers every model name (`hero`)."""
from minigpt4.models.hero.hero_model import HEROModel

__all__ = ["HEROModel"]
