"""`python eval_hero.py --cfg-path CFG --ckpt CKPT [--split test] ...`: the same as `hero-eval`.

Kept so the documented command (and `torchrun ... eval_hero.py ...`) works from a clone;
the code is `minigpt4/cli/evaluate.py`.
"""
import sys

from minigpt4.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
