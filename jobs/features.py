"""spark-submit entry for `deepmine features`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/features.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
