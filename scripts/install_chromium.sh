#!/usr/bin/env bash
# Installs Debian's chromium (headless browser for the HTML report test) unless `chromium` is on PATH.
#   bash scripts/install_chromium.sh      (idempotent, quiet; as root; exit != 0 if it cannot, e.g. offline)
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# an index older than a day may name package versions the mirror no longer has
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
    apt-get update -qq >/dev/null
fi
apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
