"""The Petastorm -> Horovod -> torch path: feature tables, text preparation, loader, launch, trainer, training stages, batch inference, export."""
