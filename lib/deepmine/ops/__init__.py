"""Running it and watching it: the run report, cluster submission, the environment doctor."""
