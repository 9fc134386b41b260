"""The command line of every deployment component, one function each."""

from __future__ import annotations

from pathlib import Path

from .pki import TlsFiles

# The command line of every component, built in one place: the loopback deployment below
# runs them (with absolute executable paths; subprocess isolation unless asked), and
# docker-compose.yml / docker-compose.tls.yml spell out the same lines for containers
# (`container_commands`; tests/test_compose.py checks that the files agree with it).


ISOLATION_MODES = ("subprocess", "process")


def _check_isolation(isolation: str) -> None:
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation {isolation!r}: expected one of {ISOLATION_MODES}")


def superlink_command(host: str, port: int, tls: TlsFiles | None = None, node_auth: bool = False,
                      isolation: str = "subprocess", executable: str = "flower-superlink") -> list[str]:
    """`flower-superlink`: Fleet, Control and Runtime APIs on `host:port` (one HTTP port in
    flwr 1.42), no dependency installation at run time, TLS with `tls` (else `--insecure`),
    SuperNode authentication with `node_auth` (needs TLS). With `isolation="process"` the
    ServerApp runs under a separate `flower-superexec` (:func:`superexec_command`)."""
    _check_isolation(isolation)
    if node_auth and tls is None:
        raise ValueError("SuperNode authentication needs TLS (flwr refuses it on an insecure connection)")
    command = [executable, "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if isolation != "subprocess":
        command += ["--isolation", isolation]
    if tls is not None:
        command += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                    "--ssl-keyfile", str(tls.server_key)]
    else:
        command.append("--insecure")
    if node_auth:
        command.append("--enable-supernode-auth")
    return command


def supernode_command(superlink: str, node_config: str, host: str, port: int,
                      root_certificates: Path | str | None = None, private_key: Path | str | None = None,
                      isolation: str = "subprocess", runtime_tls: TlsFiles | None = None,
                      executable: str = "flower-supernode") -> list[str]:
    """`flower-supernode` of one site: connects to the SuperLink's `superlink` address (TLS
    verified with `root_certificates`, else `--insecure`), passes `node_config` (see
    :meth:`Site.node_config`) to its ClientApps, serves its Runtime API on `host:port`
    (with TLS if `runtime_tls` is given: needed when a separate `flower-superexec` connects
    with `--root-certificates`), and signs its requests with `private_key` when the SuperLink
    authenticates SuperNodes."""
    _check_isolation(isolation)
    if private_key is not None and root_certificates is None:
        raise ValueError("SuperNode authentication needs TLS (flwr refuses it on an insecure connection)")
    command = [executable, "--superlink", superlink, "--node-config", node_config,
               "--host", host, "--port", str(port)]
    if isolation != "subprocess":
        command += ["--isolation", isolation]
    command += ["--root-certificates", str(root_certificates)] if root_certificates is not None else ["--insecure"]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    if runtime_tls is not None:
        command += ["--ssl-ca-certfile", str(runtime_tls.ca_cert), "--ssl-certfile", str(runtime_tls.server_cert),
                    "--ssl-keyfile", str(runtime_tls.server_key)]
    return command


def superexec_command(runtime_api_address: str, root_certificates: Path | str | None = None,
                      executable: str = "flower-superexec") -> list[str]:
    """`flower-superexec` for `--isolation process`: it polls the Runtime API at
    `runtime_api_address` (a SuperLink's: it runs ServerApps; a SuperNode's: ClientApps;
    flwr 1.42 tells which from the API itself) and starts `flwr-serverapp` /
    `flwr-clientapp` processes in its own environment (no dependency installation)."""
    command = [executable, "--runtime-api-address", runtime_api_address]
    command += ["--root-certificates", str(root_certificates)] if root_certificates is not None else ["--insecure"]
    return command


def site_exec_command(runtime_api_address: str, root_certificates: Path | str | None = None,
                      executable: str = "fedmedlora") -> list[str]:
    """`fedmedlora site-exec`: the ClientApp executor of a hospital that pins its apps, with
    `flower-superexec`'s options (:func:`superexec_command`); it starts a ClientApp only when
    the node config's `approved-apps` lists the digest of its FAB (fedmedlora/site_exec.py)."""
    return [executable, "site-exec", *superexec_command(runtime_api_address, root_certificates)[1:]]


def register_command(public_key: Path | str, connection: str, name: str, executable: str = "flwr") -> list[str]:
    """`flwr supernode register`: tell the SuperLink of `connection` the public key of the
    SuperNode called `name` (run by the coordinator, before that SuperNode starts)."""
    return [executable, "supernode", "register", str(public_key), connection, "--name", name]


# The container layout of docker-compose.yml (and its TLS overlay docker-compose.tls.yml).
