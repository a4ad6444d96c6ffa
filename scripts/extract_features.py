#!/usr/bin/env python
"""Raw videos -> one HERO feature file per video (the command line of `minigpt4.extraction`).

    python scripts/extract_features.py --video_dir videos/ --output_dir features/ [--device cuda]

Options, outputs and exit codes: `--help` and minigpt4/extraction/cli.py, which holds the code.
This file only lets the command run from a checkout without installing the package.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from minigpt4.extraction.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
