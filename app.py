"""`python app.py --ckpt RUN_DIR [--eval_dir RUN_DIR/eval_test] ...`: the same as `hero-app`.

Kept so the demo starts from a clone without the console script; the code is `minigpt4/app/cli.py`.
"""
import sys

from minigpt4.app.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
