#!/usr/bin/env python
"""Write the demo's small causal LM + the real SmolLM2 chat tokenizer into a folder.

Usage: python scripts/make_tiny_llm.py --out demo/tiny_llm [--hidden 128 --layers 2] [--real [--layers N]]
(the code is `minigpt4/common/tiny_llm.py`).
"""
import sys

from minigpt4.common.tiny_llm import main

if __name__ == "__main__":
    sys.exit(main())
