"""Nightly hygiene [ours]: act on a scan — drop or quarantine generated images from WebDataset shards, and
report on a scan dataset. No Ray here; `pipeline.engine.filter` fans the per-shard functions out over a
cluster."""
