"""Spark SQL / Spark ML stages: RFM segments, association rules, recommendations, churn, forecasts, review summaries."""
