"""The scan (issue 4), no Ray: shard reading (shards.py) and decoding (decode.py), the read+decode stage
(prepare.py), scoring (score.py), rows and schema (rows.py, schema.py), completion markers / resume /
provenance (completion.py), the driver logic (job.py) and its config (config.py). The Ray Data plan is
`pipeline.engine.scan`."""
