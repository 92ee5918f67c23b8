"""Demo data generator (`synthetic`), labelled image sources (`sources`) and UnivFD augmentations (`augment`).
No Ray here; modules are imported explicitly (`from pipeline.data.sources import load_labelled`)."""
