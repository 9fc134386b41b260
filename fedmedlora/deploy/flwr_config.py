"""Flower's connection configuration (FLWR_HOME/config.toml) and free loopback ports."""

from __future__ import annotations

import socket
from pathlib import Path

CONNECTION = "deploy"  # the connection name in the private FLWR_HOME/config.toml

def flwr_config_text(address: str, root_certificates: str | None, connection: str = CONNECTION) -> str:
    """The text of a `config.toml` with one SuperLink connection, `connection`, the default.

    flwr 1.42 reads `[superlink.<name>]` with `address` (the SuperLink's HTTP port: the
    Control API shares it with the Fleet and Runtime APIs), and either `insecure = true` or
    `root-certificates` (an absolute path to the CA that signed the SuperLink's certificate).
    """
    lines = ["[superlink]", f'default = "{connection}"', "", f"[superlink.{connection}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f'root-certificates = "{root_certificates}"')
    return "\n".join(lines) + "\n"


def write_flwr_config(flwr_home: Path, address: str, root_certificates: Path | None,
                      connection: str = CONNECTION) -> Path:
    """`FLWR_HOME/config.toml` with one SuperLink connection (see :func:`flwr_config_text`);
    `root_certificates` is made absolute."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(flwr_config_text(
        address, None if root_certificates is None else str(root_certificates.resolve()), connection))
    return path


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free on `host` now (the OS picks them; held open together so
    they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()
