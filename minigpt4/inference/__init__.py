"""Inference on new clips with a trained run (`hero-infer`, the web app): layer 6.

`InferenceSession` loads a run once and predicts videos (extracted with the run's recorded
settings) or feature files; `ClipResult` / `InferenceFailure` are what it returns and
`format_report` prints a result. Importing this package is light (no torch).
"""
from minigpt4.inference.report import format_report
from minigpt4.inference.results import ClipResult, InferenceFailure
from minigpt4.inference.session import InferenceSession

__all__ = ["ClipResult", "InferenceFailure", "InferenceSession", "format_report"]
