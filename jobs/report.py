"""spark-submit entry for `deepmine report`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/report.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
