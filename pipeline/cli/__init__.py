"""The jobs' command lines, one module per job [ours]: flags generated from the job's pydantic config
(`pipeline.cli.flags`), the executor chosen here, every operator error turned into ONE console line and an
exit code from `pipeline.exitcodes`. `jobs/*.py` are three-line shims of these modules (`ray job submit --
python jobs/scan_bucket.py …`); installed, they are the `genscan-*` console scripts (pyproject.toml)."""
