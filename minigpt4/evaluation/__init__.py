"""Scoring what a model wrote: prediction records (`records`), metrics and collapse warnings
(`metrics`), plots (`plots`). Imports only `minigpt4.common`, so the runner's validation and the
`hero-eval` command share one definition of every number."""
