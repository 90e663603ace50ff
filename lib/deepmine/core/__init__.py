"""What every stage uses: the config object, the Spark session, lake I/O, table schemas, shared metrics."""
