"""spark-submit entry for `deepmine doctor`: same arguments, no logic of its own.

    spark-submit [spark options] jobs/doctor.py --conf conf/local.yaml --date 2026-11-22 ...
"""
import sys

from deepmine.cli import main

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
