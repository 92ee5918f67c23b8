"""Evaluation, no Ray: `evaluate` (UnivFD-format per-generator table, robustness sweeps, attribution; the
metrics are `pipeline.metrics`), `markdown` (the report as Markdown), `plots` (PNG)."""
