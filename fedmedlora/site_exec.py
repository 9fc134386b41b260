"""`fedmedlora site-exec`: a hospital's ClientApp executor that runs only the apps it approved
(fedmedlora/app_pin.py).

The Flower internals it takes are in strategies/flower_compat.py (checked against the flwr
version there; tests/test_flower_compat.py fails on another). Flower's SuperNode (with
`--isolation process`) leaves its ClientApps to a `flower-superexec`, which starts
`TASK_TYPE_TO_COMMAND[CLIENT_APP]` ("flwr-clientapp") for each message; that process pulls
the message, its Context (with the node config) and the FAB (`run_clientapp.pull_task_input`),
installs the FAB (`install_from_fab`) and only then imports the app. `site-exec` is Flower's
superexec with two changes, in its own process:

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


def superexec_main(argv: list[str]) -> None:
    """Flower's `flower-superexec` with `argv` (its own options), as described above."""
    from strategies.flower_compat import run_superexec_for_client_apps

    with tempfile.TemporaryDirectory(prefix="fedmedlora-site-exec-") as folder:  # created 0700
        # Flower starts the command by path with its own arguments; `-P` keeps the working
        # directory off sys.path, so only this environment's fedmedlora runs the check.
        launcher = Path(folder) / "fedmedlora-clientapp"
        launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -m fedmedlora.site_exec "$@"\n')
        launcher.chmod(0o700)
        sys.argv = ["fedmedlora site-exec", *argv]
        run_superexec_for_client_apps(str(launcher))


def clientapp_main() -> None:
    """Flower's `flwr-clientapp`, refusing a FAB that the node config does not approve
    before installing it (the launcher `superexec_main` writes runs this)."""
    from fedmedlora.app_pin import APPROVED_APP_ENV, check_app
    from strategies.flower_compat import run_clientapp_checking_fab

    def check(fab_file, node_config: dict) -> None:
        os.environ[APPROVED_APP_ENV] = check_app(fab_file, node_config)  # AppNotApproved: Flower replies

    run_clientapp_checking_fab(check)


if __name__ == "__main__":
    clientapp_main()
