#!/usr/bin/env bash
# Measure one load-test step with quantserve and with guidellm (PyPI), same server and workload, side by side.
#
#   loadtest/compare_guidellm.sh [--target URL] [--rate 1] [--input-tokens 128] [--output-tokens 32] ...
#
# guidellm gets an environment of its own (GUIDELLM_VENV, default under /tmp): its pins (torch, transformers,
# datasets) are not quantserve's, so it never goes into .venv or pyproject.toml. Without --target the application is
# started on 127.0.0.1 (serving only the measured variant) and stopped afterwards. Bounded: application start
# (300 s at most), two quantserve steps and one guidellm run of --warmup + --duration seconds each (35 s by default).
# Output: reports/guidellm-compare/comparison.md, beside guidellm.json and the two quantserve runs.
set -euo pipefail
cd "$(dirname "$0")/.."

GUIDELLM_VERSION="${GUIDELLM_VERSION:-0.8.1}"
GUIDELLM_VENV="${GUIDELLM_VENV:-${TMPDIR:-/tmp}/quantserve-guidellm-${GUIDELLM_VERSION}}"
# guidellm asks for torch loosely; pinned to the CPU build (as pyproject.toml pins quantserve's), pip does not pull
# the CUDA one (gigabytes). Here both torch==2.13.0 and torch==2.13.0+cpu resolve to the local CPU wheel.
TORCH_PIN="${TORCH_PIN:-torch==2.13.0+cpu}"

# An environment left by an earlier run is reused only when it holds this version.
if ! "$GUIDELLM_VENV/bin/guidellm" --version 2>/dev/null | grep -qx "guidellm version: $GUIDELLM_VERSION"; then
  echo "==> installing guidellm $GUIDELLM_VERSION into $GUIDELLM_VENV (its own environment)"
  python3 -m venv "$GUIDELLM_VENV"
  "$GUIDELLM_VENV/bin/pip" install --progress-bar off -q "guidellm==$GUIDELLM_VERSION" "$TORCH_PIN"
fi

exec .venv/bin/python -m loadtest.guidellm_compare --guidellm "$GUIDELLM_VENV/bin/guidellm" "$@"
