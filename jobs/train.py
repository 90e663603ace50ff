"""spark-submit entry for `deepmine train`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/train.py --conf conf/local.yaml --date 2026-11-22 --model cnn ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
