"""The scan's HTML report [ours]: summary.py (the numbers, DuckDB over the scan), plots.py (PNGs),
gallery.py (which rows to show and their thumbnails), render.py + templates/ (the page, Jinja2 with
autoescape), build.py (ReportConfig, build_report: one report folder). Same layer as the scan and the
hygiene filter; it reads the filter's outputs, the filter never imports it."""
