"""`python train_hero.py --cfg-path CFG [--options k=v ...] [--resume [PATH]]`: the same as `hero-train`.

Kept so the documented command (and `torchrun ... train_hero.py ...`) works from a clone;
the code is `minigpt4/cli/train.py`.
"""
import sys

from minigpt4.cli.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
