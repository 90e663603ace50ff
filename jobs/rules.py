"""spark-submit entry for `deepmine rules`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/rules.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["rules", *sys.argv[1:]]))
