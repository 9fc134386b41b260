"""`fedmedlora site-exec`: a hospital's ClientApp executor that runs only the apps it approved
(fedmedlora/app_pin.py), and every use of Flower internals that takes.

Checked against flwr 1.42 (`SUPPORTED_FLWR`; tests/test_flower_compat.py fails on another
version). Flower's SuperNode (with `--isolation process`) leaves its ClientApps to a
`flower-superexec`, which starts `TASK_TYPE_TO_COMMAND[CLIENT_APP]` ("flwr-clientapp") for
each message; that process pulls the message, its Context (with the node config) and the FAB
(`run_clientapp.pull_task_input`), installs the FAB (`install_from_fab`) and only then imports
the app. `site-exec` is Flower's superexec with two changes, in its own process:

- it takes ClientApp tasks only (`AutoExecPlugin.supported_task_types`): a run whose FAB
  declares another kind of app (an AgentApp) is never started here;
- it starts each ClientApp with this module (a launcher script in a private folder, run
  with this interpreter) instead of `flwr-clientapp`: Flower's own `flwr-clientapp` with
  `install_from_fab` checking the digest of the FAB's bytes against the node config's
  `approved-apps` first. A refusal raises inside Flower's handler, which replies to the
  coordinator with an error naming the reason, so nothing of that app is installed,
  imported or run at the site.

With subprocess isolation the SuperNode starts `flower-superexec` itself, by name: a site
that pins apps runs its SuperNode with `--isolation process` and this executor beside it.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

SUPPORTED_FLWR = "1.42"


def build_fab(app_dir: Path) -> bytes:
    """The FAB `flwr run` and `flwr build` make of `app_dir` (the same function: fixed
    timestamps and sorted paths, so the same files give the same bytes)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(app_dir)


def superexec_main(argv: list[str]) -> None:
    """Flower's `flower-superexec` with `argv` (its own options), as described above."""
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType
    from flwr.supercore.superexec.plugin.base_exec_plugin import AutoExecPlugin

    with tempfile.TemporaryDirectory(prefix="fedmedlora-site-exec-") as folder:  # created 0700
        # Flower starts the command by path with its own arguments; `-P` keeps the working
        # directory off sys.path, so only this environment's fedmedlora runs the check.
        launcher = Path(folder) / "fedmedlora-clientapp"
        launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -m fedmedlora.site_exec "$@"\n')
        launcher.chmod(0o700)
        TASK_TYPE_TO_COMMAND[TaskType.CLIENT_APP] = str(launcher)
        AutoExecPlugin.supported_task_types = frozenset({TaskType.CLIENT_APP})
        sys.argv = ["fedmedlora site-exec", *argv]
        flower_superexec()


def clientapp_main() -> None:
    """Flower's `flwr-clientapp`, refusing a FAB that the node config does not approve
    before installing it (the launcher `superexec_main` writes runs this)."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    from fedmedlora.app_pin import APPROVED_APP_ENV, check_app

    pull, install = runtime.pull_task_input, runtime.install_from_fab
    node_config: dict = {}

    def pull_task_input(client):
        message, context, run, fab = pull(client)
        node_config.update(context.node_config)
        return message, context, run, fab

    def install_from_fab(fab_file, *args, **kwargs):
        os.environ[APPROVED_APP_ENV] = check_app(fab_file, node_config)  # AppNotApproved: Flower replies
        return install(fab_file, *args, **kwargs)

    runtime.pull_task_input, runtime.install_from_fab = pull_task_input, install_from_fab
    flwr_clientapp()


if __name__ == "__main__":
    clientapp_main()
