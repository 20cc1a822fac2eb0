"""The PyTorch Lightning side: the LightningModule, the command line, callbacks, calibration at fit, records and evaluation."""
