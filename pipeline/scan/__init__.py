"""The scan, no Ray: decoding (decode.py; device decode routing in gpu_decode.py), the read+decode stage
(prepare.py, reading through `pipeline.shards`), provenance evidence (provenance.py; its row columns in
provenance_columns.py, its effect on a row's decision in provenance_policy.py), scoring (score.py: one
detector, or several as a DetectorSet), the run's detectors as the driver reads them (detectors.py), rows
(rows.py), the shard writer (write.py: Parquet then marker, by the output contract `pipeline.output`), run
planning / resume / provenance (completion.py), incremental carry-forward (carry.py), the work handed to an
executor and the in-process executor (execute.py), the driver logic (job.py) and its config (config.py). The
Ray executor is `pipeline.engine.scan.RayScanExecutor`, passed in by jobs/scan_bucket.py."""
