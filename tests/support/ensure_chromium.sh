#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/test_report_gallery.py): install Debian's `chromium`
# when it is missing (needs root and the Debian package mirrors; ~1 min). Idempotent; prints the version.
# `make test` runs it first; without root or apt-get it exits 1 saying what to install.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure_chromium: chromium is missing; install it (Debian: apt-get install -y chromium)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null
