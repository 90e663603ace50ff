"""deepmine: a retailer's nightly data-mining and deep-learning batch on Apache Spark."""

__version__ = "0.1.0"
