"""spark-submit entry for `deepmine forecast`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/forecast.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["forecast", *sys.argv[1:]]))
