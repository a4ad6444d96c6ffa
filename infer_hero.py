"""`python infer_hero.py --ckpt RUN_DIR --video clip.mp4 ...`: the same as `hero-infer`.

Kept so the documented command works from a clone; the code is `minigpt4/cli/infer.py`.
"""
import sys

from minigpt4.cli.infer import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
