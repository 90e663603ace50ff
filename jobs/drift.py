"""spark-submit entry for `deepmine drift`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/drift.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["drift", *sys.argv[1:]]))
