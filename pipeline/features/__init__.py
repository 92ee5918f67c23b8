"""The feature store [ours]: a scan keeps the frozen backbone's per-image features (`--features`), a re-score
applies a new linear head to them without a backbone pass (jobs/rescore.py), and training / "more like this"
queries read them. `pipeline.feature_store` (the parts and their spec), `config` (the re-score job's
config), `train` (a linear head from stored features), `head` (a checkpoint's heads on stored features),
`rescore` (the job). No Ray here: `pipeline.engine` runs the per-shard work on Ray."""
