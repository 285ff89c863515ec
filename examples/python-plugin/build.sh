#!/usr/bin/env bash
# Build py-tracker.wasm: componentize-py makes the component from app.py against the
# contract's device-type world; `drover plugin embed` adds plugin.toml as its manifest.
#   COMPONENTIZE_PY=… DROVER=… ./build.sh [out.wasm]
set -euo pipefail
cd "$(dirname "$0")"
COMPONENTIZE_PY=${COMPONENTIZE_PY:-componentize-py}
DROVER=${DROVER:-drover}
out=${1:-py-tracker.wasm}
PYTHONDONTWRITEBYTECODE=1 "$COMPONENTIZE_PY" -d ../../wit -w device-type componentize --stub-wasi app -o "$out"
"$DROVER" plugin embed "$out" --manifest plugin.toml
