"""`deepmine submit`: run a stage's job on a cluster with spark-submit.

The library is packed as a zip (`dist/deepmine-<version>.zip`, just `lib/deepmine`) and shipped with
`--py-files`, the config with `--files`, so executors import deepmine without it being installed
on them. The Python dependencies (pyspark, pandas, pyarrow, torch, ...) must exist on the nodes:
either installed there, or shipped as a packed virtualenv with `--archives` (see the README).

    deepmine submit --master spark://host:7077 --conf conf/cluster.yaml --date 2026-11-22 \
        [--stage nightly] [--spark-arg=--deploy-mode=client ...] [-- stage arguments]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import deepmine

REPO = Path(__file__).resolve().parents[3]


def build_pyfiles(out_dir: str | os.PathLike = REPO / "dist") -> Path:
    """Zip lib/deepmine (sources only) for --py-files; returns the zip's path."""
    package = Path(deepmine.__file__).resolve().parent
    out = Path(out_dir) / f"deepmine-{deepmine.__version__}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, Path("deepmine") / path.relative_to(package))
    tmp.replace(out)
    return out


def spark_submit_path() -> str:
    found = shutil.which("spark-submit")
    if found:
        return found
    import pyspark
    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def submit_command(master: str, conf: str, run_date: str, stage: str = "nightly",
                   stage_args: list[str] | None = None, spark_args: list[str] | None = None,
                   pyfiles: Path | None = None) -> list[str]:
    """The spark-submit command line for one stage's job."""
    pyfiles = pyfiles or build_pyfiles()
    job = REPO / "jobs" / f"{stage}.py"
    if not job.is_file():
        raise ValueError(f"no job for stage {stage!r}: {job} does not exist")
    conf_path = Path(conf)
    if not conf_path.is_file():
        raise FileNotFoundError(f"config file not found: {conf}")
    return [spark_submit_path(), "--master", master, "--py-files", str(pyfiles),
            "--files", str(conf_path.resolve()), *(spark_args or []),
            str(job), "--conf", str(conf_path), "--date", run_date, *(stage_args or [])]


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="deepmine submit", description=__doc__.splitlines()[0])
    parser.add_argument("--master", required=True)
    parser.add_argument("--conf", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--stage", default="nightly")
    parser.add_argument("--spark-arg", action="append", default=[],
                        help="one spark-submit argument, e.g. --spark-arg=--num-executors=4")
    parser.add_argument("stage_args", nargs="*", help="after --: arguments for the stage")
    args = parser.parse_args(argv)
    cmd = submit_command(args.master, args.conf, args.date, args.stage, args.stage_args,
                         args.spark_arg)
    print(" ".join(cmd), flush=True)
    env = dict(os.environ, PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
    return subprocess.call(cmd, env=env)
