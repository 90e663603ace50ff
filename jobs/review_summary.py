"""spark-submit entry for `deepmine review_summary`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/review_summary.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["review_summary", *sys.argv[1:]]))
