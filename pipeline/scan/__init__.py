"""The scan, no Ray: decoding (decode.py), the read+decode stage (prepare.py, reading through
`pipeline.shards`; device decode routing in gpu_decode.py),
scoring (score.py: one detector, or several as a DetectorSet), the run's detectors as the driver reads them
(detectors.py), rows (rows.py), the shard writer (write.py: Parquet then marker, by the output contract
`pipeline.output`), run planning / resume / provenance (completion.py), the work handed to an executor and the
in-process executor (execute.py), the driver logic (job.py) and its config (config.py). shards.py and
schema.py only re-export `pipeline.shards` / `pipeline.output` for older imports. The Ray executor is
`pipeline.engine.scan.RayScanExecutor`, passed in by jobs/scan_bucket.py."""
