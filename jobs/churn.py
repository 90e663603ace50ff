"""spark-submit entry for `deepmine churn`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/churn.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["churn", *sys.argv[1:]]))
