"""The container layout of docker-compose.yml and docker-compose.tls.yml, from the same command builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .commands import register_command, site_exec_command, superexec_command, superlink_command, supernode_command
from .flwr_config import write_flwr_config
from .pki import TlsFiles, write_node_keys, write_tls_files
from .sites import Site

SUPERLINK_SERVICE = "superlink"
SUPERLINK_PORT = 9092                 # Fleet, Control and Runtime APIs, published on the host
CONTAINER_DATA_DIR = "/data/site"     # each site's data folder, in its ClientApp executor only
CONTAINER_WORKER_DIR = "/tmp/fedmedlora-site-worker"  # the warm site worker's folder, in the same executor
CONTAINER_SECRETS = "/run/secrets"    # where compose mounts `secrets`
COMPOSE_CONNECTION = "compose"        # the connection name in the compose config.toml files
COMPOSE_SITES = {"hospital-a": 9094, "hospital-b": 9095, "hospital-c": 9096}  # site -> Runtime API port
# Torch threads per site ($SITE_THREADS): the sites of the demo share one host's cores, and
# each taking all of them oversubscribes the CPU (the 1-round demo took 12 min on 2 cores).
COMPOSE_SITE_THREADS = 1
# What each hospital pins (docs/howto/hospitals.md, "Which app a hospital runs"): the embedded
# default model of the image (modeling.base.EMBEDDED_DEFAULT), and the app digests in
# $FEDMEDLORA_APPROVED_APPS, which scripts/compose_demo.sh sets to `fedmedlora app-digest .`
# of the tree it runs; unset, it is empty and every site refuses every run.
COMPOSE_BASE_MODEL = "embedded:smollm2-135m-instruct"
APPROVED_APPS_VARIABLE = "FEDMEDLORA_APPROVED_APPS"


def secret_path(name: str) -> str:
    """Where compose mounts the secret `name` in a container."""
    return f"{CONTAINER_SECRETS}/{name}"


def container_tls(prefix: str) -> TlsFiles:
    """The secrets `<prefix>-ca`, `<prefix>-cert`, `<prefix>-key` as a :class:`TlsFiles`."""
    return TlsFiles(Path(secret_path(f"{prefix}-ca")), Path(secret_path(f"{prefix}-cert")),
                    Path(secret_path(f"{prefix}-key")))


def container_commands(sites: Mapping[str, int] | None = None, tls: bool = False) -> dict[str, list[str]]:
    """The command of every service of the compose deployment, by service name.

    `sites` maps a site name to the port of its SuperNode's Runtime API (default
    :data:`COMPOSE_SITES`). Services: `superlink`, `superexec-serverapp`, and per site
    `supernode-<site>` and `superexec-clientapp-<site>`; with `tls`, also
    `register-<site>` (its public key, registered before its SuperNode starts), and the
    SuperLink authenticates SuperNodes. Each site pins its apps and base model; its
    `approved-apps` here is empty, the default of $FEDMEDLORA_APPROVED_APPS in the files."""
    sites = COMPOSE_SITES if sites is None else sites
    superlink_address = f"{SUPERLINK_SERVICE}:{SUPERLINK_PORT}"
    ca = secret_path("superlink-ca") if tls else None
    commands = {
        SUPERLINK_SERVICE: superlink_command("0.0.0.0", SUPERLINK_PORT, container_tls("superlink") if tls else None,
                                             node_auth=tls, isolation="process"),
        "superexec-serverapp": superexec_command(superlink_address, ca),
    }
    for name, port in sites.items():
        site = Site(name, Path(CONTAINER_DATA_DIR), approved_apps=(), base_model=COMPOSE_BASE_MODEL)
        node_config = site.node_config(Path(CONTAINER_WORKER_DIR), COMPOSE_SITE_THREADS)
        commands[f"supernode-{name}"] = supernode_command(
            superlink_address, node_config, "0.0.0.0", port, root_certificates=ca,
            private_key=secret_path(f"{name}-node-key") if tls else None, isolation="process",
            runtime_tls=container_tls(f"{name}-runtime") if tls else None)
        commands[f"superexec-clientapp-{name}"] = site_exec_command(
            f"supernode-{name}:{port}", secret_path(f"{name}-runtime-ca") if tls else None)
        if tls:
            commands[f"register-{name}"] = register_command(secret_path(f"{name}-node-pub"), COMPOSE_CONNECTION, name)
    return commands


def write_compose_credentials(out: Path, sites: Sequence[str] | None = None,
                              hosts: Sequence[str] = (SUPERLINK_SERVICE, "localhost", "127.0.0.1"),
                              days: int = 365) -> dict[str, Path]:
    """Everything docker-compose.tls.yml mounts as secrets, written under `out`:

    - `ca.crt`, `server.pem`, `server.key`: the consortium CA and the SuperLink's certificate,
      valid for `hosts` (the `superlink` service name, and localhost for `flwr` on the host);
    - `node-keys/<site>`, `node-keys/<site>.pub`: each SuperNode's key pair (the coordinator
      registers the public key; the private key stays with the site);
    - `runtime/<site>/ca.crt`, `server.pem`, `server.key`: each site's own CA and the
      certificate of its SuperNode's Runtime API (`supernode-<site>`), which its ClientApp
      executor verifies;
    - `flwr-home/config.toml`: the connection `compose` for `flwr` on the host
      (127.0.0.1:SUPERLINK_PORT, verified with `ca.crt`).

    Returns the paths by the name of the compose secret that mounts each (plus
    `flwr-config`). Private keys are written with mode 0600."""
    sites = list(COMPOSE_SITES if sites is None else sites)
    out = Path(out)
    tls = write_tls_files(out, hosts, days=days)
    paths = {"superlink-ca": tls.ca_cert, "superlink-cert": tls.server_cert, "superlink-key": tls.server_key}
    for name in sites:
        private, public = write_node_keys(out / "node-keys", name)
        runtime = write_tls_files(out / "runtime" / name, (f"supernode-{name}", "localhost", "127.0.0.1"), days=days)
        paths.update({f"{name}-node-key": private, f"{name}-node-pub": public, f"{name}-runtime-ca": runtime.ca_cert,
                      f"{name}-runtime-cert": runtime.server_cert, f"{name}-runtime-key": runtime.server_key})
    paths["flwr-config"] = write_flwr_config(out / "flwr-home", f"127.0.0.1:{SUPERLINK_PORT}", tls.ca_cert,
                                             COMPOSE_CONNECTION)
    return paths
