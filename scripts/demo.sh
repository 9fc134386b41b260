#!/usr/bin/env bash
# Quickstart: set up, then federate three simulated hospitals with `flwr run .` on the
# embedded default model. Extra arguments go to `fedmedlora simulate`, e.g.
#   ./scripts/demo.sh --run-config strategy.name=fedmedlora-plus
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedmedlora simulate "$@"
