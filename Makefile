# Two set-up commands on a fresh machine (README): `make demo` and `make test`.
# Both create .venv from pyproject.toml first (pinned torch/torchvision pair; nothing installed by hand).
PY := .venv/bin/python
STAMP := .venv/.installed

$(STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

.PHONY: venv demo test lint bench
venv: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/scan_bucket.py --demo

# The report's browser test needs headless Chromium: installed here when missing (Debian, as root), else this
# stops saying how to install it; the test fails (never skips) without it.
test: $(STAMP)
	bash tests/support/ensure_chromium.sh
	.venv/bin/ruff format --check pipeline jobs tests benchmarks
	.venv/bin/ruff check pipeline jobs tests benchmarks
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

bench: $(STAMP)
	$(PY) benchmarks/encoder.py
	$(PY) benchmarks/scan_pipeline.py
	$(PY) benchmarks/driver.py
