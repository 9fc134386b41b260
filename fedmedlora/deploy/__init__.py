"""A real Flower deployment on loopback: one SuperLink, one SuperNode per site, `flwr run`.

This is what the hospitals of a consortium run, started as local processes so that the
deployment path (a fresh `flwr-clientapp` process per message, each site's own
`--node-config`) is exercised on one machine, in CI, with the same app code as the
simulation:

1. `flower-superlink` (the coordinator) on a free port of 127.0.0.1, with runtime
   dependency installation disabled (the app runs in the installed environment);
2. one `flower-supernode` per site, each with its own `--node-config
   "data-dir='...' site-name='...'"` and its own Runtime API port for its ClientApps;
3. `flwr run <app> deploy --stream --run-config ...`, where `deploy` is a connection in a
   private `FLWR_HOME/config.toml` that points at that SuperLink.

With ``tls=True`` it writes a CA and a server certificate for 127.0.0.1/localhost and
starts every component with TLS; with ``auth=True`` (needs TLS) it also writes an EC key
pair per site, registers each public key with `flwr supernode register`, and starts each
SuperNode with its private key: the SuperLink refuses a SuperNode whose key it does not know.

The command line of every component comes from one function each (`superlink_command`,
`supernode_command`, `superexec_command`, `register_command`); `container_commands` applies
them to the container layout of docker-compose.yml and docker-compose.tls.yml (process
isolation: a `flower-superexec` per SuperLink and SuperNode), and
`write_compose_credentials` writes the certificates and keys that overlay mounts.

`fedmedlora deploy` has every site pin the app it runs and its base model (`approved-apps`,
`base-model` in the node config, `pin_sites`); a pinned site runs its SuperNode with process
isolation and `fedmedlora site-exec` (`site_exec_command`), which checks the app's digest
before any of its code runs (fedmedlora/app_pin.py, fedmedlora/site_exec.py).

Every process we start gets its own session and a marker in its environment, which its
children (SuperExec, `flwr-serverapp`, `flwr-clientapp`) inherit; stopping a deployment
signals the process trees of what we started plus every live process carrying the marker,
and checks that none is left. Logs of each process go to ``<workdir>/logs/``.

Modules: `sites`, `pki` (certificates and keys), `flwr_config` (connections, ports),
`commands` (command lines), `compose` (the container layout), `supervision` (processes),
`loopback` (the deployment and its faults).
"""

from __future__ import annotations

from .commands import (
    ISOLATION_MODES,
    register_command,
    site_exec_command,
    superexec_command,
    superlink_command,
    supernode_command,
)
from .compose import (
    APPROVED_APPS_VARIABLE,
    COMPOSE_BASE_MODEL,
    COMPOSE_CONNECTION,
    COMPOSE_SITE_THREADS,
    COMPOSE_SITES,
    CONTAINER_DATA_DIR,
    CONTAINER_SECRETS,
    CONTAINER_WORKER_DIR,
    SUPERLINK_PORT,
    SUPERLINK_SERVICE,
    container_commands,
    container_tls,
    secret_path,
    write_compose_credentials,
)
from .flwr_config import CONNECTION, flwr_config_text, free_ports, write_flwr_config
from .loopback import DeploymentError, LoopbackDeployment, deploy, pin_sites
from .pki import HOSTS, TlsFiles, write_node_keys, write_tls_files
from .sites import Site, demo_sites, parse_site
from .supervision import MARKER_VARIABLE, ProcessSet, Started

__all__ = [
    "APPROVED_APPS_VARIABLE",
    "COMPOSE_BASE_MODEL",
    "COMPOSE_CONNECTION",
    "COMPOSE_SITE_THREADS",
    "COMPOSE_SITES",
    "CONNECTION",
    "CONTAINER_DATA_DIR",
    "CONTAINER_WORKER_DIR",
    "CONTAINER_SECRETS",
    "DeploymentError",
    "HOSTS",
    "ISOLATION_MODES",
    "LoopbackDeployment",
    "MARKER_VARIABLE",
    "ProcessSet",
    "SUPERLINK_PORT",
    "SUPERLINK_SERVICE",
    "Site",
    "Started",
    "TlsFiles",
    "container_commands",
    "container_tls",
    "demo_sites",
    "deploy",
    "flwr_config_text",
    "free_ports",
    "parse_site",
    "pin_sites",
    "register_command",
    "secret_path",
    "site_exec_command",
    "superexec_command",
    "superlink_command",
    "supernode_command",
    "write_compose_credentials",
    "write_flwr_config",
    "write_node_keys",
    "write_tls_files",
]
