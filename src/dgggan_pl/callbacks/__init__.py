"""Lightning callbacks and plugins of the training run: checkpointing, image panels, run records."""
