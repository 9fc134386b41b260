"""Site specifications: a site's name and data folder, as `--site NAME=FOLDER` gives them, and what it pins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedmedlora.app_pin import APPROVED_APPS_KEY, parse_digests


@dataclass(frozen=True)
class Site:
    """One hospital: its name and its data folder (a site folder, see data_loaders.sites),
    and what it pins: `approved_apps`, the digests of the app versions it runs (None: any
    app; an empty tuple: none, every run is refused), and `base_model`, the one model.name
    it loads (None: whichever the run names)."""

    name: str
    data_dir: Path
    approved_apps: tuple[str, ...] | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        if self.approved_apps is not None:
            parse_digests(",".join(self.approved_apps))  # ValueError naming approved-apps

    def node_config(self, site_worker: Path | None = None, threads: int = 0, audit_log: Path | None = None,
                    audit_key: Path | None = None) -> str:
        """The SuperNode's `--node-config`: `data-dir`, `site-name` (client_app/runtime.py),
        `site-worker` (the warm worker's folder, client_app/app.py), `audit-log` and
        `audit-key` (the site's audit trail and the key that seals it, client_app/audit_log.py),
        `approved-apps` (fedmedlora/app_pin.py), `base-model` (client_app/runtime.py) and
        `threads` (torch threads, client_app/handlers.py)."""
        values = [("data-dir", str(self.data_dir)), ("site-name", self.name)]
        if site_worker is not None:
            values.append(("site-worker", str(site_worker)))
        if audit_log is not None:
            values.append(("audit-log", str(audit_log)))
        if audit_key is not None:
            values.append(("audit-key", str(audit_key)))
        if self.approved_apps is not None:
            values.append((APPROVED_APPS_KEY, ",".join(self.approved_apps)))
        if self.base_model is not None:
            values.append(("base-model", self.base_model))
        for key, value in values:
            if "'" in value:
                raise ValueError(f"site {self.name}: {key} {value!r} may not contain a single quote")
        text = " ".join(f"{key}='{value}'" for key, value in values)
        return f"{text} threads={int(threads)}" if threads else text


def parse_site(text: str) -> Site:
    """`NAME=FOLDER`, or `FOLDER` (then the name is the folder's name)."""
    name, sep, folder = text.partition("=")
    if not sep:
        name, folder = "", text
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--site {text!r}: folder {path} does not exist")
    if not (path / "site.json").is_file():
        raise FileNotFoundError(f"--site {text!r}: {path / 'site.json'} not found; a site folder holds a "
                                "site.json (see `fedmedlora prepare` and data_loaders/sites.py)")
    name = name.strip() or path.name
    if not name or any(c.isspace() or c in "'\"/" for c in name):
        raise ValueError(f"--site {text!r}: site name {name!r} must be non-empty, without spaces, quotes or '/'")
    return Site(name, path)


def demo_sites() -> list[Site]:
    """The three sites of the synthetic demo corpus (what the simulation federates by default)."""
    from data_loaders.sites import ensure_demo_corpus

    root = ensure_demo_corpus()
    return [Site(name, root / name) for name in ("site-a", "site-b", "site-c")]
