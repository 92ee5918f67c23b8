"""Moved: the scan output's schema is part of the scan-output contract, `pipeline.output`.

This name stays importable for code written against it; new code imports `pipeline.output`."""

from pipeline.output import COLUMNS, SCHEMA, SCHEMA_VERSION, STATUSES, check_table  # noqa: F401
