"""The Trainer-free side: checkpoint loading, the input contract's geometry, the :class:`~lightning_ad.inference.detector.Detector`, pictures and export."""
