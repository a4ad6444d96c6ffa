#!/usr/bin/env python
"""Raw videos -> one HERO feature file per video (the command line of `minigpt4.extraction`).

    python scripts/extract_features.py --video_dir videos/ --output_dir features/ [--device cuda]

Options, outputs and exit codes: `--help` and minigpt4/extraction/cli.py, which holds the code
(also installed as the `hero-extract` command).
"""
from __future__ import annotations

import sys

from minigpt4.extraction.cli import main

if __name__ == "__main__":
    sys.exit(main())
