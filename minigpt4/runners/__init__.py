"""Runners; importing this package registers them (registry name "runner_base")."""
from minigpt4.runners.runner_base import RunnerBase

__all__ = ["RunnerBase"]
