"""Rows into the lake: ingest with quarantine, the data generators, sample datasets, image sets."""
