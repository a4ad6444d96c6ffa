"""Command-line entry points (console scripts of the installed package, see pyproject.toml).

- `hero-train` (`python train_hero.py`): `minigpt4.cli.train`
- `hero-eval` (`python eval_hero.py`): `minigpt4.cli.evaluate`
- `hero-infer` (`python infer_hero.py`): `minigpt4.cli.infer` (new clips, through `minigpt4.inference`)
- `hero-extract` (`python scripts/extract_features.py`): `minigpt4.extraction.cli`

Importing this package is light: `--help` never loads torch.
"""
