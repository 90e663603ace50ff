"""The run report: one self-contained HTML file per run, next to the manifest.

`run_report(spark, config, run_date)` reads the run's manifest and the lake tables the stages
wrote, draws the plots with matplotlib (PNG, embedded as base64, so the file stands alone) and
publishes `<lake.root>/runs/run_date=D/report.html`. Each section is one function that returns
None when its stage has not run (or does not exist yet), so the report shows what there is.

Sections: overview (stages, status, timings), row reconciliation per input, RFM segments and
R/F/M distributions, top association rules, recommendation metrics beside the popularity
baseline, training curves and the CNN confusion matrix, sample images per deep cluster, and what
changed since the previous run (segment migration), and drift: the drift stage's table
(mining/drift, PSI and KS test per watched column against its model's last full training).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from deepmine.core.config import Config
from deepmine.core.lake import Lake, StageRun

Section = tuple[str, str]  # (title, html body)


# =============================================================== pure helpers

def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _figure(width: float = 6.5, height: float = 3.2):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(width, height))


def _table(df: pd.DataFrame, max_rows: int = 30) -> str:
    return df.head(max_rows).to_html(index=False, border=0, classes="data",
                                      float_format=lambda x: f"{x:.4g}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return html.escape(str(value))


# =============================================================== sections

STATUS_COLOURS = {"ok": "#2e86c1", "failed": "#c0392b", "degraded": "#d4ac0d", "skipped": "#95a5a6"}
STATUS_MEANING = {"ok": "done", "failed": "failed (the error is in the table)",
                  "degraded": "published, but not trustworthy (the reasons are in the table)",
                  "skipped": "not run: a stage it needs failed tonight"}


def _stage_note(rec: dict) -> str:
    """What an operator needs to read beside a stage's status: the error, the reasons it is
    degraded, the warnings (fallbacks it took)."""
    notes = [str(rec["error"])] if rec.get("error") else []
    notes += [str(r) for r in rec.get("degraded_reasons", [])]
    notes += [f"warning: {w}" for w in rec.get("warnings", [])]
    return "; ".join(notes)


def section_overview(ctx: "ReportContext") -> Section | None:
    stages = ctx.manifest.get("stages", {})
    if not stages:
        return None
    rows = [{"stage": name, "status": rec.get("status"), "seconds": rec.get("seconds"),
             "start": rec.get("start"), "note": _stage_note(rec)}
            for name, rec in stages.items() if name != "report"]
    df = pd.DataFrame(rows)
    fig, ax = _figure(6.5, 0.6 + 0.35 * len(df))
    colors = [STATUS_COLOURS.get(s, "#2e86c1") for s in df["status"]]
    seconds = pd.to_numeric(df["seconds"], errors="coerce").fillna(0)
    ax.barh(df["stage"], seconds, color=colors)
    for y, (status, width) in enumerate(zip(df["status"], seconds)):
        if status != "ok":  # a skipped stage has no bar: its status is written where it would be
            ax.text(width, y, f" {status}", va="center", fontsize=8,
                    color=STATUS_COLOURS.get(status, "#222"))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("stage timings")
    shown = [s for s in STATUS_COLOURS if s in set(df["status"])]
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=STATUS_COLOURS[s], label=s) for s in shown], fontsize=7,
              loc="lower right")
    bad = df[df["status"] != "ok"]
    summary = ""
    if not bad.empty:
        summary = "<p class='problems'>" + "<br>".join(
            f"<span class='status-{html.escape(str(r.status))}'>{html.escape(str(r.stage))}: "
            f"{html.escape(str(r.status))}</span> ({html.escape(STATUS_MEANING.get(r.status, ''))})"
            for r in bad.itertuples()) + "</p>"
    warnings = [(name, w) for name, rec in stages.items() for w in rec.get("warnings", [])]
    if warnings:
        summary += "<p class='warnings'>" + "<br>".join(
            f"<span class='warning'>{html.escape(name)}: warning</span>: {html.escape(str(w))}"
            for name, w in warnings) + "</p>"
    cells = df.assign(stage=df["stage"].map(lambda v: html.escape(str(v))),
                      note=df["note"].map(lambda v: html.escape(str(v))),
                      status=df["status"].map(lambda v: f"<span class='status-{html.escape(str(v))}'>"
                                                        f"{html.escape(str(v))}</span>"))
    table = cells.to_html(index=False, border=0, classes="data", escape=False,
                          float_format=lambda x: f"{x:.4g}")
    return "Stages and timings", summary + table + _png(fig)


def section_reconciliation(ctx: "ReportContext") -> Section | None:
    rows, reasons = [], []
    for name, rec in ctx.manifest.get("stages", {}).items():
        counts = rec.get("counts", {})
        if "rows_read" not in counts:
            continue
        rows.append({"input": name, "source": counts.get("input", ""),
                     "rows_read": counts["rows_read"], "rows_clean": counts.get("rows_clean"),
                     "rows_quarantined": counts.get("rows_quarantined"),
                     "accounted": counts["rows_read"] == counts.get("rows_clean", 0)
                     + counts.get("rows_quarantined", 0)})
        for reason, n in counts.get("quarantined_by_reason", {}).items():
            reasons.append({"input": name, "reason": reason, "rows": n})
    if not rows:
        return None
    body = _table(pd.DataFrame(rows))
    if reasons:
        r = pd.DataFrame(reasons)
        body += "<h3>Quarantined rows by reason</h3>" + _table(r)
        fig, ax = _figure(6.5, 0.5 + 0.3 * len(r))
        ax.barh(r["input"] + ": " + r["reason"], r["rows"], color="#d68910")
        ax.invert_yaxis()
        ax.set_xlabel("rows")
        ax.set_title("quarantine by reason")
        body += _png(fig)
    return "Row reconciliation", body


def section_rfm(ctx: "ReportContext") -> Section | None:
    rfm = ctx.table("mining/rfm")
    if rfm is None:
        return None
    sizes = rfm.groupby("segment").size().sort_values(ascending=False).rename("customers")
    fig, axes = _figure(9, 2.8)
    fig.clf()
    axes = fig.subplots(1, 4)
    axes[0].barh(sizes.index, sizes.values, color="#2e86c1")
    axes[0].invert_yaxis()
    axes[0].set_title("segment sizes")
    for ax, col in zip(axes[1:], ["recency_days", "frequency", "monetary"]):
        values = pd.to_numeric(rfm[col], errors="coerce").dropna()
        ax.hist(np.log1p(values.clip(lower=0)), bins=30, color="#5d6d7e")
        ax.set_title(f"log1p({col})")
    fig.tight_layout()
    summary = rfm.groupby("segment")[["recency_days", "frequency", "monetary"]].mean() \
        .join(sizes).reset_index().sort_values("customers", ascending=False)
    return "Customer segments (RFM)", _table(summary) + _png(fig)


def section_rules(ctx: "ReportContext") -> Section | None:
    rules = ctx.table("mining/rules")
    if rules is None or rules.empty:
        return None if rules is None else ("Association rules", "<p>No rule passed the thresholds.</p>")
    rules = rules.sort_values(["lift", "confidence"], ascending=False)
    shown = rules.assign(antecedents=rules["antecedents"].map(lambda x: ", ".join(map(str, x))),
                         consequents=rules["consequents"].map(lambda x: ", ".join(map(str, x))))
    cols = ["antecedents", "consequents", "support", "confidence", "lift", "leverage", "conviction"]
    fig, ax = _figure(6.5, 3.6)
    points = ax.scatter(rules["support"], rules["confidence"], c=rules["lift"], cmap="viridis", s=18)
    fig.colorbar(points, ax=ax, label="lift")
    ax.set_xlabel("support")
    ax.set_ylabel("confidence")
    ax.set_title(f"{len(rules)} rules")
    return "Association rules (top 20 by lift)", _table(shown[cols], 20) + _png(fig)


def section_recommend(ctx: "ReportContext") -> Section | None:
    rec = ctx.manifest.get("stages", {}).get("recommend")
    metrics = (rec or {}).get("metrics", {})
    pairs = [(k, v, metrics.get(f"baseline_{k}")) for k, v in metrics.items()
             if not k.startswith("baseline_") and isinstance(v, (int, float))]
    if not pairs:
        return None
    # the baseline by its name: item means for ratings (explicit), popularity for purchases
    baseline = "item means" if metrics.get("feedback") == "explicit" else "popularity"
    df = pd.DataFrame(pairs, columns=["metric", "als", f"{baseline} baseline"])
    both = df.dropna()
    status = [f"status <b>{html.escape(str(rec.get('status', '?')))}</b>"] + [
        f"degraded: {html.escape(str(r))}" for r in rec.get("degraded_reasons", [])]
    body = "<p>" + "<br>".join(status) + "</p>" + _table(df)
    if not both.empty:
        fig, ax = _figure(6.5, 3)
        x = np.arange(len(both))
        ax.bar(x - 0.2, both["als"], 0.4, label="ALS")
        ax.bar(x + 0.2, both[f"{baseline} baseline"], 0.4, label=baseline)
        ax.set_xticks(x, both["metric"], rotation=30, ha="right")
        ax.legend()
        ax.set_title("recommendations on the held-out split")
        body += _png(fig)
    return "Recommendations", body


def _stage_status(rec: dict, detail: str) -> str:
    """A stage's status, `detail` (HTML) after it, and each reason it was degraded, one a line."""
    lines = [f"status <b>{html.escape(str(rec.get('status')))}</b>, {detail}"] + [
        f"degraded: {html.escape(str(r))}" for r in rec.get("degraded_reasons", [])]
    return "<p>" + "<br>".join(lines) + "</p>"


def _roc_curves(ax, curves: list[tuple[str, list | None]], title: str) -> None:
    """ROC curves given as [false positive rate, true positive rate] points, with the diagonal."""
    for label, points in curves:
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.plot([0, 1], [0, 1], color="#aaa", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8)


def section_churn(ctx: "ReportContext") -> Section | None:
    rec = ctx.manifest.get("stages", {}).get("churn")
    if not rec or rec.get("status") not in ("ok", "degraded"):
        return None
    m = rec.get("metrics", {})
    status = _stage_status(rec, f"validation cutoff "
                           f"{html.escape(str(rec.get('counts', {}).get('validation_cutoff')))}, "
                           f"churn model <b>{html.escape(str(m.get('model')))}</b>"
                           + (f" ({html.escape(m['model_choice']['reason'])})"
                              if m.get("model_choice") else "")
                           + f", spend model <b>{html.escape(str(m.get('spend_model')))}</b>")
    table = pd.DataFrame([
        ("AUC", m.get("auc"), m.get("baseline_auc")),
        ("PR AUC", m.get("pr_auc"), m.get("baseline_pr_auc")),
        ("lift in top 10%", m.get("lift_at_10pct"), m.get("baseline_lift_at_10pct")),
        ("spend RMSE", m.get("spend_rmse"), m.get("baseline_spend_rmse")),
    ], columns=["metric", "model", "baseline (recency alone; last horizon's spend)"])
    fig, _ = _figure(9, 3.2)
    fig.clf()
    roc_ax, lift_ax = fig.subplots(1, 2)
    _roc_curves(roc_ax, [(f"model (AUC {m.get('auc')})", m.get("roc")),
                         (f"recency (AUC {m.get('baseline_auc')})", m.get("baseline_roc"))],
                "ROC on the validation cutoff")
    lift = m.get("lift_chart") or []
    lift_ax.bar([d["decile"] for d in lift], [d["lift"] or 0 for d in lift], color="#2e86c1")
    lift_ax.axhline(1.0, color="#aaa", lw=0.8)
    lift_ax.set_xlabel("decile of churn probability (1 = highest)")
    lift_ax.set_ylabel("lift")
    lift_ax.set_title("lift chart")
    fig.tight_layout()
    kept = m.get("features_kept") or []
    body = (status + _table(table) + _png(fig)
            + f"<p>features kept ({len(kept)}): {html.escape(', '.join(kept))}"
            + (f"; PCA variance explained {m['pca_variance_explained']}"
               if m.get("pca_variance_explained") is not None else "") + "</p>")
    churn = ctx.table("mining/churn")
    if churn is not None and not churn.empty:
        bands = churn.groupby("risk_band").agg(customers=("customer_id", "size"),
                                               mean_probability=("churn_probability", "mean"),
                                               expected_spend=("expected_spend", "sum"))
        body += _table(bands.reset_index())
    return "Churn risk and next-period spend", body


def section_reviews(ctx: "ReportContext") -> Section | None:
    stages = ctx.manifest.get("stages", {})
    recs = {m: stages.get(f"train_{m}") for m in ("textcnn", "textrnn")}
    recs = {m: r for m, r in recs.items() if r and r.get("status") in ("ok", "degraded")}
    summary_rec = stages.get("review_summary")
    if not recs and not summary_rec:
        return None
    body = ""
    if recs:
        any_rec = next(iter(recs.values()))["metrics"]
        rows = [(m, r["status"], r["metrics"].get("accuracy"), r["metrics"].get("auc"))
                for m, r in recs.items()]
        rows.append(("TF-IDF + logistic regression (baseline)", "", any_rec.get("baseline_accuracy"),
                     any_rec.get("baseline_auc")))
        rows.append(("majority class", "", any_rec.get("majority_accuracy"), 0.5))
        body += "".join(_stage_status(r, f"{html.escape(m)}, {r['metrics'].get('epochs_run')} "
                                      f"epochs, stopped by {html.escape(str(r['metrics'].get('stop_reason')))}")
                        for m, r in recs.items())
        body += _table(pd.DataFrame(rows, columns=["model", "status", "test accuracy", "test AUC"]))
        fig, ax = _figure(5, 3.6)
        curves = [(f"{m} (AUC {r['metrics'].get('auc')})", r["metrics"].get("roc"))
                  for m, r in recs.items()]
        curves.append((f"baseline (AUC {any_rec.get('baseline_auc')})", any_rec.get("baseline_roc")))
        _roc_curves(ax, curves, "ROC on the test reviews")
        fig.tight_layout()
        body += _png(fig)
        for example in (recs.get("textrnn", {}).get("metrics", {}).get("attention_examples") or []):
            words = " ".join(f"<b>{html.escape(t)}</b>" if top else html.escape(t)
                             for t, _, top in example["tokens"])
            body += (f"<p>{html.escape(example['review_id'])} (label {example['label']}, "
                     f"predicted {example['sentiment_probability']}): {words}</p>")
    summary = ctx.table("mining/review_summary")
    if summary is not None and not summary.empty:
        source = (summary_rec or {}).get("metrics", {}).get("source")
        summary = summary.assign(negative_terms=summary["negative_terms"].map(
            lambda terms: ", ".join(terms)))
        ranked = summary[summary["reviews"] >= 5].sort_values(["mean_sentiment", "product_id"])
        body += f"<p>per product, from {html.escape(str(source))} (products with 5 reviews or more)</p>"
        body += "<p>most negative</p>" + _table(ranked.head(5))
        body += "<p>most positive</p>" + _table(ranked.tail(5).iloc[::-1])
    return "Reviews and sentiment", body


def section_forecast(ctx: "ReportContext") -> Section | None:
    rec = ctx.manifest.get("stages", {}).get("forecast")
    if not rec or rec.get("status") not in ("ok", "degraded"):
        return None
    m = rec.get("metrics", {})
    last = html.escape(str(rec.get("counts", {}).get("last_period")))
    status = _stage_status(rec, f"{m.get('series')} series ({html.escape(str(m.get('level')))} "
                           f"level, by {html.escape(str(m.get('frequency')))}, season "
                           f"{m.get('season_length')}), {m.get('series_skipped')} on the "
                           f"fallback, horizon {m.get('horizon')} periods after {last}")
    table = pd.DataFrame([
        ("MASE (mean over fitted series)", m.get("mase"), m.get("baseline_mase")),
        ("MASE summed over fitted series", m.get("mase_sum"), m.get("baseline_mase_sum")),
        ("series beating the baseline", m.get("win_rate"), None),
        ("80% interval coverage (backtest)", m.get("interval_coverage"), None),
    ], columns=["metric", "chosen models", "seasonal naive"])
    chosen = pd.DataFrame(sorted((m.get("models_chosen") or {}).items()),
                          columns=["model", "series"])
    body = status + _table(table) + _table(chosen)
    largest = m.get("largest_series") or {}
    forecast = ctx.table("mining/forecast")
    if largest.get("history") and forecast is not None and not forecast.empty:
        ahead = forecast[forecast["series_id"] == largest["series_id"]].sort_values("ds")
        past = pd.DataFrame(largest["history"], columns=["ds", "y"])
        fig, ax = _figure(9, 3.2)
        ax.plot(pd.to_datetime(past["ds"]), past["y"], color="#444", lw=1, label="history")
        ds = pd.to_datetime(ahead["ds"])
        ax.plot(ds, ahead["yhat"], color="#2e86c1", lw=1.5, label=f"forecast ({largest['model']})")
        ax.fill_between(ds, ahead["yhat_lower"], ahead["yhat_upper"], color="#2e86c1",
                        alpha=0.25, label="80% interval")
        ax.set_title(f"net quantity, largest series: {largest['series_id']}")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        fig.tight_layout()
        body += (f"<p>largest series: {html.escape(largest['series_id'])} (model "
                 f"{html.escape(largest['model'])}), history and forecast</p>" + _png(fig))
    return "Demand forecast", body


def _training_gate(rec: dict, metrics: dict) -> str:
    """The model beside its baseline, its status and how training ended."""
    parts = [f"status <b>{html.escape(str(rec.get('status', '?')))}</b>"]
    baselines = metrics.get("baselines") or {}
    if metrics.get("accuracy") is not None and baselines:
        parts.append(f"test accuracy {_fmt(metrics['accuracy'])} against majority class "
                     f"{_fmt(baselines.get('majority_class'))} and logistic regression on pixels "
                     f"{_fmt(baselines.get('logistic_pixels'))}")
    km = metrics.get("kmeans_baseline") or {}
    if metrics.get("cluster_acc") is not None and km:
        parts.append(f"cluster_acc {_fmt(metrics['cluster_acc'])} against K-means on the raw "
                     f"vectors {_fmt(km.get('cluster_acc'))}")
    if metrics.get("stop_reason"):
        parts.append(f"stopped: {html.escape(str(metrics['stop_reason']))} after "
                     f"{metrics.get('epochs_run')} epochs (best {metrics.get('best_epoch')}), "
                     f"retries {metrics.get('retries', 0)}")
    for reason in rec.get("degraded_reasons", []):
        parts.append(f"degraded: {html.escape(str(reason))}")
    return "<p>" + "<br>".join(parts) + "</p>"


def _training_curves(name: str, hist: pd.DataFrame) -> str:
    """One panel per quantity: losses (log scale), accuracies, throughput."""
    x = hist["epoch"] if "epoch" in hist else np.arange(len(hist))
    numeric = [c for c in hist.columns if c != "epoch" and pd.api.types.is_numeric_dtype(hist[c])]
    panels = [("loss (log scale)", [c for c in numeric if c.endswith("loss")], True),
              ("accuracy", [c for c in numeric if "accuracy" in c or c == "assignments_changed"],
               False),
              ("samples/s", [c for c in numeric if c == "samples_per_s"], False)]
    panels = [p for p in panels if p[1]]
    if not panels:
        return ""
    fig, axes = _figure(3.3 * len(panels), 3)
    fig.clf()
    for i, (title, columns, log) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for col in columns:
            values = hist[col].astype(float)
            if log:
                values = values.where(values > 0)
            ax.plot(x, values, marker="o", label=col)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{name}: training curves", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def section_training(ctx: "ReportContext") -> Section | None:
    body = ""
    stages = ctx.manifest.get("stages", {})
    images = (stages.get("features") or {}).get("metrics", {}).get("images", {})
    if images.get("source") and any(n.startswith("train") and n.endswith(("images", "cnn"))
                                    for n in stages):
        source = images["source"]
        body += (f"<p class='image-source'>The image models trained on images from "
                 f"<b>{html.escape(str(source))}</b>"
                 + (" (synthetic shapes: not product photos)" if source == "synthetic" else "")
                 + ".</p>")
    for name, rec in ctx.manifest.get("stages", {}).items():
        if not name.startswith("train"):
            continue
        metrics = rec.get("metrics", {})
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        body += f"<h3>{html.escape(name)}</h3>"
        if scalars:
            body += "<p>" + ", ".join(f"{html.escape(k)} = {_fmt(v)}" for k, v in scalars.items()) + "</p>"
        body += _training_gate(rec, metrics)
        history = metrics.get("history")
        if isinstance(history, list) and history and isinstance(history[0], dict):
            body += _training_curves(name, pd.DataFrame(history))
        matrix = metrics.get("confusion_matrix")
        if matrix:
            m = np.array(matrix)
            fig, ax = _figure(4.5, 4.5)
            ax.imshow(m, cmap="Blues")
            for (i, j), v in np.ndenumerate(m):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
            names = metrics.get("class_names")
            if names and len(names) == len(m):
                ax.set_xticks(range(len(m)), names, rotation=60, ha="right", fontsize=7)
                ax.set_yticks(range(len(m)), names, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title("confusion matrix")
            body += _png(fig)
    return ("Training", body) if body else None


def section_cluster_samples(ctx: "ReportContext") -> Section | None:
    preds = ctx.table("predictions/autoencoder_images")
    images = ctx.clean_images()
    if preds is None or images is None or "cluster" not in preds:
        return None
    joined = preds.merge(images, on="image_id")
    if joined.empty:
        return None
    clusters = sorted(joined["cluster"].unique())[:10]
    h, w = ctx.config.images.height, ctx.config.images.width
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(clusters), 8, figsize=(8, len(clusters)), squeeze=False)
    for row, cluster in enumerate(clusters):
        sample = joined[joined["cluster"] == cluster].head(8)
        for col in range(8):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(sample):
                pixels = np.frombuffer(bytes(sample.iloc[col]["pixels"]), dtype=np.uint8)
                ax.imshow(pixels.reshape(h, w), cmap="gray")
            if col == 0:
                ax.set_title(f"cluster {cluster}", fontsize=7, loc="left")
    return "Sample images per deep cluster", _png(fig)


def section_changes(ctx: "ReportContext") -> Section | None:
    previous = ctx.previous_run_date()
    if previous is None:
        return None
    body = f"<p>Compared with the run of {html.escape(previous)}.</p>"
    now, before = ctx.table("mining/rfm"), ctx.table("mining/rfm", previous)
    if now is None or before is None:
        return None
    moved = before[["customer_id", "segment"]].merge(
        now[["customer_id", "segment"]], on="customer_id", suffixes=("_before", "_now"))
    migration = pd.crosstab(moved["segment_before"], moved["segment_now"])
    body += "<h3>Segment migration (customers in both runs)</h3>" + migration.to_html(border=0)
    return "Changes since the previous run", body


def section_drift(ctx: "ReportContext") -> Section | None:
    """mining/drift: each watched column against its model's last full training snapshot."""
    drift = ctx.table("mining/drift")
    if drift is None or drift.empty:
        return None
    stage = ctx.manifest.get("stages", {}).get("drift", {}).get("metrics", {})
    body = "<p>Tonight's values against the night each model was last fully trained on "
    body += "(PSI over the reference's deciles; two-sample KS test).</p>"
    retrain = stage.get("full_retrain") or {}
    if retrain:
        body += "<p class='warning'>Full retrain asked for: " + "; ".join(
            f"{html.escape(k)} ({html.escape(v)})" for k, v in retrain.items()) + "</p>"
    shown = drift.sort_values(["drifted", "psi"], ascending=False)[
        ["table", "column", "reference_date", "psi", "ks_statistic", "ks_p_value", "drifted"]]
    shown = shown.assign(drifted=shown["drifted"].map({True: "DRIFT", False: ""}))
    return "Drift", body + _table(shown, 100)


def section_models(ctx: "ReportContext") -> Section | None:
    """Models kept fresh: per training stage, tonight's training (full or warm start, and why),
    its registered version, whether it became the champion, whose predictions were published."""
    from deepmine.deep.registry import model_decisions
    rows = model_decisions(ctx.manifest)
    if not rows:
        return None
    shown = pd.DataFrame(rows)[["stage", "status", "training", "training_reason", "version",
                                "parent_version", "promoted", "promotion_reason", "champion",
                                "predictions_from"]]
    shown = shown.assign(promoted=shown["promoted"].map({True: "yes", False: "NO"}))
    body = ("<p>Each training is a version in the model registry (MLflow); the champion alias "
            "moves only when tonight's version holds up, otherwise the champion's predictions "
            "are published. A warm start begins from the champion's weights; a full training "
            "happens on schedule, without a champion of tonight's spec, or when drift asks.</p>")
    return "Models kept fresh", body + _table(shown, 50)


SECTIONS: list[Callable[["ReportContext"], Section | None]] = [
    section_overview, section_reconciliation, section_rfm, section_churn, section_forecast,
    section_rules, section_recommend, section_reviews,
    section_training, section_cluster_samples, section_changes, section_drift, section_models,
]


# =============================================================== assembling

class ReportContext:
    """What the sections read: the manifest, and lake tables as pandas (None when absent)."""

    def __init__(self, lake: Lake, config: Config, run_date: str):
        self.lake, self.config, self.run_date = lake, config, run_date
        self.manifest = lake.read_manifest(run_date)

    def table(self, name: str, run_date: str | None = None) -> pd.DataFrame | None:
        partition = f"run_date={run_date or self.run_date}"
        if not self.lake.has_partition(name, partition):
            return None
        return self.lake.read(name, partition).toPandas()

    def clean_images(self) -> pd.DataFrame | None:
        try:
            df = self.lake.read_history("clean/images", self.run_date)
        except FileNotFoundError:
            return None
        return df.select("image_id", "pixels").toPandas()

    def previous_run_date(self) -> str | None:
        dates = self.lake.run_dates(before=self.run_date)
        return dates[-1] if dates else None


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.data{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.data td,table.data th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:right}
img.plot{max-width:100%;display:block;margin:.8em 0}
nav a{margin-right:1em}
.status-ok{color:#2e86c1} .status-failed{color:#c0392b;font-weight:bold}
.status-degraded{color:#b7950b;font-weight:bold} .status-skipped{color:#7f8c8d;font-style:italic}
.warning{color:#b7950b;font-weight:bold}
"""


def render_report(ctx: ReportContext) -> tuple[str, list[str]]:
    """The HTML page and the titles of the sections it holds."""
    sections = [s for s in (fn(ctx) for fn in SECTIONS) if s is not None]
    nav = " ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "\n".join(f'<section id="s{i}"><h2>{html.escape(t)}</h2>\n{b}</section>'
                     for i, (t, b) in enumerate(sections))
    page = (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>deepmine run {html.escape(ctx.run_date)}</title><style>{CSS}</style></head>"
            f"<body><h1>deepmine nightly run {html.escape(ctx.run_date)}</h1>"
            f"<p>lake: {html.escape(ctx.lake.root)}</p><nav>{nav}</nav>{body}"
            f"<script type='application/json' id='manifest'>"
            f"{html.escape(json.dumps(ctx.manifest, default=str))}</script></body></html>")
    return page, [t for t, _ in sections]


def report_url(lake: Lake, run_date: str) -> str:
    return lake.url("runs", f"run_date={run_date}", "report.html")


def run_report(spark: SparkSession, config: Config, run_date: str) -> dict:
    lake = Lake(spark, config.lake.root)
    with StageRun(lake, run_date, "report") as run:
        ctx = ReportContext(lake, config, run_date)
        page, titles = render_report(ctx)
        url = report_url(lake, run_date)
        lake.write_text(url, page)
        run.counts.update(sections=len(titles))
        run.metrics["sections"] = titles
        run.outputs["report"] = url
    return run.counts
