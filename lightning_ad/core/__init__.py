"""Features and scoring: backbones, the kNN searches, SPADE as a plain module, thresholds and metrics (no Lightning)."""
