#!/usr/bin/env bash
# The Docker Compose demo, end to end: build the image, start the consortium (a SuperLink and
# three hospitals), run the app once, stop every container (docs/howto/docker-compose.md).
#
#   ./scripts/compose_demo.sh                          # insecure, the app's defaults
#   ./scripts/compose_demo.sh --tls                    # TLS and SuperNode authentication
#   ./scripts/compose_demo.sh --tls num-server-rounds=1 train.max-steps=4   # run-config pairs
#
# Needs a running Docker engine and Docker Compose v2.23 or later (`docker compose`, or a
# v2 `docker-compose`; COMPOSE names another command). Exits non-zero unless the run
# finished as completed. Environment: APP_UID (the uid the services run as; default yours),
# BASE_IMAGE, TORCH_BUILD (Dockerfile), SITE_THREADS, FEDMEDLORA_APPROVED_APPS (docker-compose.yml;
# default the digest of this folder's app, the one the run sends).
set -euo pipefail
cd "$(dirname "$0")/.."

tls=0
if [[ ${1:-} == --tls ]]; then tls=1; shift; fi

if [[ -z ${COMPOSE:-} ]]; then
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
  elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
  else echo "error: Docker Compose v2 not found (neither 'docker compose' nor docker-compose)" >&2; exit 2; fi
fi
version=$($COMPOSE version --short 2>/dev/null || true)
if [[ ! $version =~ ^v?2\.([0-9]+) ]] || (( BASH_REMATCH[1] < 23 )); then
  echo "error: '$COMPOSE' is version '${version:-unknown}'; the compose files need Compose v2.23 or later" \
       "(Debian's docker-compose 1.x rejects them)" >&2
  exit 2
fi
[[ -x .venv/bin/fedmedlora ]] || bash scripts/setup.sh

# The services run as this uid: it owns deploy/outputs and the keys, root included.
export APP_UID=${APP_UID:-$(id -u)}
# The hospitals run only this app: the digest of the FAB `fedmedlora run` below sends from here.
export FEDMEDLORA_APPROVED_APPS=${FEDMEDLORA_APPROVED_APPS:-$(.venv/bin/fedmedlora app-digest .)}
files=(-f docker-compose.yml)
mkdir -p deploy/outputs
[[ -d deploy/demo-data/coordinator ]] || .venv/bin/fedmedlora demo-corpus deploy/demo-data
if (( tls )); then
  files+=(-f docker-compose.tls.yml)
  [[ -f deploy/certificates/ca.crt ]] || .venv/bin/fedmedlora deploy-keys --out deploy/certificates
  flwr_home=$PWD/deploy/certificates/flwr-home
else
  flwr_home=$PWD/deploy/flwr-home
  .venv/bin/python -c "from pathlib import Path; from fedmedlora.deploy import write_flwr_config
write_flwr_config(Path('$flwr_home'), '127.0.0.1:9092', None, 'compose')"
fi

step() { echo "[compose demo] $1 in $((SECONDS - mark)) s"; mark=$SECONDS; }
mark=$SECONDS
$COMPOSE "${files[@]}" build
step "image built"
stop() { $COMPOSE "${files[@]}" down --remove-orphans; step "stopped"; }
trap stop EXIT
$COMPOSE "${files[@]}" up -d
step "consortium up"
run_config=("--run-config=data.server-validation='/data/validation'")
for pair in "$@"; do run_config+=("--run-config=$pair"); done
FLWR_HOME=$flwr_home .venv/bin/fedmedlora run compose "${run_config[@]}"
step "run finished"
