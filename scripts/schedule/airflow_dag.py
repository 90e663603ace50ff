"""Airflow DAG for the deepmine nightly: one task per stage, in the nightly's order, with retries.

The run date is Airflow's logical date (`{{ ds }}`). Each task runs the stage's job through
`deepmine submit` (spark-submit with the library zipped for --py-files and the config shipped with
--files). Copy this file into your DAGs folder and set the Airflow Variables `deepmine_home`
(the repository on the Airflow worker), `deepmine_master` and `deepmine_conf`.
Ingest of ratings/images is left out: add tasks like `ingest` with `--entity` where you have them.
Exit codes: 75 (the lake is locked) fails the task and Airflow retries it; 4 (done, but the stage is
degraded: see the run's manifest) fails it too, so that it is seen.
"""
from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator

# The nightly's stage order (lib/deepmine/nightly.py STAGES); a test keeps the two in step.
# The last three before the report need reviews (input.reviews, ingested with --entity reviews);
# a shop without reviews removes them here, as the nightly itself skips them.
STAGES = ["ingest", "rfm", "churn", "forecast", "rules", "recommend", "train_ncf", "features",
          "drift", "train_autoencoder_customers", "train_autoencoder_images", "train_cnn",
          "train_textcnn", "train_textrnn", "review_summary", "report"]

# stage -> (job, extra arguments)
JOBS = {
    "ingest": ("ingest", "--input {{ var.value.deepmine_input }}"),
    "train_autoencoder_customers": ("train", "--model autoencoder --target customers"),
    "train_autoencoder_images": ("train", "--model autoencoder --target images"),
    "train_cnn": ("train", "--model cnn"),
    "train_ncf": ("train", "--model ncf"),
    "train_textcnn": ("train", "--model textcnn"),
    "train_textrnn": ("train", "--model textrnn"),
}

with DAG(
    dag_id="deepmine_nightly",
    schedule="30 2 * * *",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    # Every task's command takes the lake's lock while it runs (deepmine.cli.WRITES_LAKE), as the
    # nightly does: a task that meets a running nightly, or a task of another DAG run on the same
    # lake, exits 75 at once and is retried. The lock serialises writers; it does not order them
    # (that is this DAG's dependencies and max_active_runs=1).
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    tags=["deepmine"],
) as dag:
    previous = None
    for stage in STAGES:
        job, extra = JOBS.get(stage, (stage, ""))
        task = BashOperator(
            task_id=stage,
            bash_command=(
                "cd {{ var.value.deepmine_home }} && .venv/bin/deepmine submit "
                "--master {{ var.value.deepmine_master }} --conf {{ var.value.deepmine_conf }} "
                f"--date {{{{ ds }}}} --stage {job} -- {extra}"
            ),
        )
        if previous is not None:
            previous >> task
        previous = task
