"""Training: LightningModule, losses, callbacks and the ``train(cfg)`` entry point."""
