"""`fedmedlora <command>`: the project's command line.

Commands read the same dotted keys as the Flower run config (`--set key=value`), so
a figure from the CLI and one from a federated run mean the same thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clinical_ie.instances import RE_MODES

if TYPE_CHECKING:
    from settings.config import RunConfig

log = logging.getLogger("fedmedlora")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _run_config_overrides(pairs: list[str], option: str = "--run-config") -> dict[str, Any]:
    """`key=value` pairs -> overrides, refused (naming the key) unless every key is valid."""
    from settings.config import validate

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{option} {pair!r}: expected key=value")
        overrides[key.strip()] = _parse_value(value.strip())
    validate(overrides)  # Flower's own message for a bad key does not name it
    return overrides


def _run_config(pairs: list[str]) -> RunConfig:
    """The whole run config: `--set` pairs over the defaults."""
    from settings.config import validate

    return validate(_run_config_overrides(pairs, "--set"))


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from data_loaders.synthetic import generate_corpus

    folders = generate_corpus(Path(args.out), seed=args.seed, docs_per_site=args.docs_per_site)
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


def _load_model(cfg: RunConfig, adapter: str):
    """(model, tokenizer, labels): the base model with the adapter if given; `labels` are a
    token-classification adapter's (its head's, saved beside it), () for a generative one."""
    from modeling.adapter_io import attach_saved_adapter
    from modeling.base import load_base_model
    from modeling.token_classification import TOKEN_CLASSIFICATION, adapter_task, load_token_classifier, read_labels

    if not adapter or adapter_task(Path(adapter)) != TOKEN_CLASSIFICATION:
        if cfg.token_classification():
            raise ValueError("model.task = 'token-classification' needs --adapter, a token-classification adapter "
                             "(its head is trained, there is no zero-shot tagger)")
        model, tokenizer = load_base_model(cfg.model.name, cfg.quantization, cfg.model.dtype)
        return (attach_saved_adapter(model, Path(adapter)) if adapter else model), tokenizer, ()
    labels = read_labels(Path(adapter))
    model, tokenizer = load_token_classifier(cfg.model.name, labels, cfg.quantization, cfg.model.dtype)
    return attach_saved_adapter(model, Path(adapter)), tokenizer, labels


def _constrained(args: argparse.Namespace, cfg: RunConfig) -> bool:
    """--constrained / --no-constrained, else the run config's eval.constrained."""
    return cfg.eval.constrained if args.constrained is None else args.constrained


_CONSTRAINED_HELP = ("constrained decoding: quoted strings only copied from the sentence, keys only the types "
                     "asked, entity numbers only those listed (default: the run config's eval.constrained)")


def cmd_check_site(args: argparse.Namespace) -> int:
    """Read site folders as a site's ClientApp will, before any run: every error names
    the file and line (or key) at fault, and what the site would train on is counted."""
    from clinical_ie.evaluate import site_instances
    from data_loaders.sites import load_site
    cfg = _run_config(args.set)
    failed = 0
    for folder in args.folders:
        try:
            site = load_site(Path(folder))
            counts = {split: len(site_instances(site, split, cfg.tasks())) for split in ("train", "validation", "test")}
        except (ValueError, OSError) as err:  # reader errors, missing or unreadable files
            print(f"{folder}: error: {err}", file=sys.stderr)
            failed += 1
            continue
        docs = "/".join(str(len(site.splits[k])) for k in ("train", "validation", "test"))
        problem = ("" if counts["train"] else " -- no training instances: this site cannot train") + \
                  ("" if counts["validation"] else " -- no validation instances: this site cannot evaluate")
        print(f"{folder}: site {site.name}: {docs} documents and {counts['train']}/{counts['validation']}/"
              f"{counts['test']} instances (train/validation/test); entity types {', '.join(site.entity_types)}; "
              f"relation types {', '.join(site.relation_types) or 'none'}{problem}")
        failed += not counts["train"]
    return 1 if failed else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Corpus + preset -> a site folder: documents.jsonl, site.json, stats.json."""
    from data_loaders.corpora import read_corpus
    from data_loaders.jsonl import write_jsonl
    from data_loaders.mapping import load_preset
    from data_loaders.splits import split_documents

    preset = load_preset(args.preset)
    docs, stats = read_corpus(Path(args.source), preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(docs, out / "documents.jsonl")
    site = {"name": args.name or out.name, "entity_types": list(preset.entity_types),
            "relation_types": list(preset.relation_types), "prepared_with": preset.name}
    if preset.score_by:
        site["score_by"] = preset.score_by
    (out / "site.json").write_text(json.dumps(site, indent=2) + "\n")
    splits = {k: len(v) for k, v in split_documents(docs).items()}
    (out / "stats.json").write_text(json.dumps({**stats.as_dict(), "splits": splits}, indent=2) + "\n")
    print(stats.summary())
    print(f"splits (documents): {splits}")
    print(f"site folder: {out.resolve()}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score the base model (zero-shot) or base + adapter on one split of a site folder:
    entities, relations with gold entities and relations end to end (given-entities mode),
    or entities and relations end to end (end-to-end mode)."""
    from clinical_ie.evaluate import InstanceEvaluator, site_instances, stable_subset
    from data_loaders.sites import load_site
    cfg = _run_config(args.set)
    re_mode = args.re_mode or cfg.data.re_mode
    site = load_site(Path(args.data))
    model, tokenizer, labels = _load_model(cfg, args.adapter)
    # A tagger scores the entity instances only: the same sentences as the generative ones.
    tasks = ("ner",) if labels else cfg.tasks()
    instances = stable_subset(site_instances(site, args.split, tasks, re_mode), args.limit)
    constrained = _constrained(args, cfg) and not labels
    if labels:
        from clinical_ie.tagging import check_label_types
        from clinical_ie.token_classification import TaggerEvaluator, label_types

        check_label_types(site.name, site.entity_types, label_types(labels))
        evaluator = TaggerEvaluator(tokenizer, instances, labels, cfg.train.max_length, cfg.eval.batch_size,
                                    score_by=site.score_by)
        log.info("scoring %d entity instances of %s/%s with a token-classification adapter", len(instances),
                 site.name, args.split)
    else:
        evaluator = InstanceEvaluator(tokenizer, instances, cfg.train.max_length, cfg.eval.max_new_tokens,
                                      cfg.eval.batch_size, score_by=site.score_by, constrained=constrained)
        log.info("scoring %d instances of %s/%s (data.re-mode %s%s): loss, then generation", len(instances),
                 site.name, args.split, re_mode, ", constrained decoding" if constrained else "")
    evaluation = evaluator.evaluate(model, f"{site.name} {args.split}")
    result = {
        "site": site.name, "split": args.split, "adapter": args.adapter or None,
        "model": cfg.model.name, "re-mode": re_mode, "constrained": constrained,
        "task": "token-classification" if labels else "generative", **evaluation.to_metrics(),
    }
    print(f"## {site.name} / {args.split} ({'adapter ' + args.adapter if args.adapter else 'zero-shot'}, "
          f"data.re-mode {re_mode})\n")
    print(evaluation.to_markdown())
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Folder of .txt notes -> .ann files (BRAT) or one JSONL file of entities and relations."""
    from tqdm.auto import tqdm

    from clinical_ie.extract import extract
    from clinical_ie.token_classification import extract_tagged
    from data_loaders.brat import write_brat
    from data_loaders.document import Document, Entity, Relation
    from data_loaders.jsonl import write_jsonl
    from data_loaders.schema import check_types

    cfg = _run_config(args.set)
    entity_types = [t.strip() for t in args.types.split(",") if t.strip()]
    relation_types = [t.strip() for t in args.relation_types.split(",") if t.strip()]
    check_types(entity_types, "--types")
    re_mode = args.re_mode or cfg.data.re_mode
    notes = sorted(Path(args.input).glob("*.txt"))
    if not notes:
        raise FileNotFoundError(f"{args.input}: no .txt notes found")
    model, tokenizer, labels = _load_model(cfg, args.adapter)
    if labels and relation_types:
        raise ValueError(f"--relation-types {args.relation_types!r}: {args.adapter} is a token-classification "
                         "adapter, which tags entities only; leave --relation-types empty")
    constrained = _constrained(args, cfg)
    out = Path(args.out)
    docs, dropped = [], 0
    for note in tqdm(notes, desc="extract", unit="note"):
        text = note.read_text(encoding="utf-8", errors="strict")
        if labels:
            result = extract_tagged(model, tokenizer, labels, text, entity_types, cfg.train.max_length,
                                    cfg.eval.batch_size, where=f"--adapter {args.adapter}")
        else:
            result = extract(model, tokenizer, text, entity_types, relation_types,
                             cfg.eval.max_new_tokens, cfg.eval.batch_size, re_mode, constrained)
        dropped += result.not_in_text
        ids = {}
        entities = []
        for e in result.entities + [a for r in result.relations for a in (r.arg1, r.arg2)]:
            if (e.start, e.end, e.type or "entity") not in ids:
                key = (e.start, e.end, e.type or "entity")
                ids[key] = f"T{len(ids) + 1}"
                entities.append(Entity(ids[key], key[2], ((e.start, e.end),), e.text))
        relations = [Relation(f"R{i + 1}", r.type, ids[(r.arg1.start, r.arg1.end, r.arg1.type or "entity")],
                              ids[(r.arg2.start, r.arg2.end, r.arg2.type or "entity")])
                     for i, r in enumerate(result.relations)]
        docs.append(Document(note.stem, text, entities, relations))
    if args.format == "brat":
        out.mkdir(parents=True, exist_ok=True)
        for doc in docs:
            write_brat(doc, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(docs, out)
    print(f"{len(docs)} notes, {sum(len(d.entities) for d in docs)} entities, "
          f"{sum(len(d.relations) for d in docs)} relations -> {out} "
          f"({dropped} predicted strings not in the text were dropped)")
    return 0


def _flwr_run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Validated overrides; `output-dir` defaults to <app>/outputs (the ServerApp's working
    directory, on this machine, is not the caller's)."""
    overrides = _run_config_overrides(args.run_config)
    overrides.setdefault("output-dir", str(Path(args.app).resolve() / "outputs"))
    return overrides


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedmedlora.local_run import flwr_run

    overrides = _flwr_run_overrides(args)
    return flwr_run(Path(args.app).resolve(), Path(args.flwr_home), overrides, args.num_supernodes)


def cmd_deploy(args: argparse.Namespace) -> int:
    from fedmedlora.deploy import DeploymentError, demo_sites, deploy, parse_site

    overrides = _flwr_run_overrides(args)
    sites = [parse_site(s) for s in args.site] if args.site else demo_sites()
    try:
        return deploy(Path(args.app), sites, overrides, Path(args.workdir) if args.workdir else None,
                      tls=args.tls, auth=args.tls and not args.no_node_auth, timeout=args.timeout or None,
                      stdout=sys.stdout, isolation=args.isolation, site_workers=not args.no_site_workers)
    except DeploymentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process of the deployment was stopped", file=sys.stderr)
        return 130


def cmd_site_exec(args: argparse.Namespace) -> int:
    """A hospital's ClientApp executor that runs only approved apps (fedmedlora/site_exec.py)."""
    from fedmedlora.site_exec import superexec_main

    superexec_main(args.superexec_args)
    return 0


def cmd_app_digest(args: argparse.Namespace) -> int:
    """The digest a hospital lists in its node config's approved-apps (fedmedlora/app_pin.py)."""
    from fedmedlora.app_pin import app_digest

    print(app_digest(Path(args.app)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """`flwr run <app> <connection> --stream`, failing unless the run finished as completed."""
    from fedmedlora.deploy.run_status import run_and_check
    from fedmedlora.local_run import run_config_arg

    overrides = _run_config_overrides(args.run_config)
    run_config = [run_config_arg(overrides)] if overrides else []
    return run_and_check(Path(args.app).resolve(), args.connection, run_config, stdout=sys.stdout)


def cmd_bundle(args: argparse.Namespace) -> int:
    """The offline wheelhouse for an air-gapped node (fedmedlora/bundle.py)."""
    from fedmedlora.bundle import BundleError, write_bundle

    try:
        manifest = write_bundle(Path(args.app), Path(args.out), torch=args.torch, platform=args.platform or None,
                                python=args.python or None, torch_index=args.torch_index or None)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"wrote {len(manifest['files'])} wheels ({total / 1e6:.0f} MB) to {Path(args.out).resolve()}: "
          f"{manifest['project']}, {manifest['torch']}, the model {manifest['model']}")
    print(f"on the node, with no network: sh {Path(args.out) / 'install.sh'} [VENV]")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit trails' chains and that the sites' and the coordinator's agree."""
    from fedmedlora.audit_check import verify
    from wire.audit import AuditError

    try:
        problems = verify(Path(args.coordinator), [Path(p) for p in args.site], [Path(k) for k in args.key])
    except (AuditError, OSError) as err:
        print(f"tampered or damaged: {err}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"ok: {args.coordinator} and {len(args.site)} site trail(s) are intact, sealed under the keys given "
          "and agree")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """The memorisation audit: canaries in one site's notes, train, exposure and extraction."""
    from fedmedlora.memorisation import AuditError, AuditSettings, run_audit

    settings = AuditSettings(canary_site=args.canary_site, repeats=_int_list(args.repeats, "--repeats"),
                             per_level=args.per_level, alternatives=args.alternatives, dp_epsilon=args.dp_epsilon,
                             variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()), seed=args.seed)
    try:
        results = run_audit(Path(args.app).resolve(), _run_config_overrides(args.run_config), Path(args.out), settings)
    except AuditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"canary site {results['canary-site']}: {results['site-training-instances']} training instances, "
          f"each canary copy seen about {results['expected-times-seen-per-copy']:.2f} times")
    print("\n".join(results["table"]))
    print(f"details: {Path(args.out).resolve() / 'audit.json'}")
    return 0


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"{option} {text!r}: expected comma-separated integers, e.g. 1,16,128") from None


def cmd_deploy_keys(args: argparse.Namespace) -> int:
    """Certificates and SuperNode keys for docker-compose.tls.yml."""
    from fedmedlora.deploy import COMPOSE_SITES, SUPERLINK_SERVICE, write_compose_credentials

    if args.no_sites and args.site:
        raise ValueError("--no-sites and --site exclude each other")
    sites = [] if args.no_sites else args.site or list(COMPOSE_SITES)
    for name in sites:
        if not name or any(c.isspace() or c in "'\"/" for c in name):
            raise ValueError(f"--site {name!r}: a site name must be non-empty, without spaces, quotes or '/'")
    hosts = [SUPERLINK_SERVICE, "localhost", "127.0.0.1", *args.host]
    paths = write_compose_credentials(Path(args.out), sites, hosts=list(dict.fromkeys(hosts)), days=args.days)
    out = Path(args.out).resolve()
    print(f"wrote certificates and keys to {out} (server certificate for {', '.join(dict.fromkeys(hosts))})")
    for role, path in paths.items():
        print(f"  {role:24s} {path}")
    print(f"connect with: FLWR_HOME={paths['flwr-config'].parent.resolve()} flwr run . compose --stream")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedmedlora", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-corpus", help="write the synthetic multi-site demo corpus (BRAT)")
    demo.add_argument("out", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--docs-per-site", type=int, default=60)
    demo.set_defaults(func=cmd_demo_corpus)

    prep = sub.add_parser("prepare", help="corpus + label-mapping preset -> a site folder (JSONL + site.json + stats)")
    prep.add_argument("--preset", required=True, help="built-in preset name or a path to your own TOML preset")
    prep.add_argument("--source", required=True, help="the corpus folder (or ADE folder)")
    prep.add_argument("--out", required=True, help="site folder to write")
    prep.add_argument("--name", default="", help="site name (default: the folder name)")
    prep.set_defaults(func=cmd_prepare)

    check = sub.add_parser("check-site", help="read site folders as their ClientApp will and report the first "
                                              "error (file and line) or what each would train on")
    check.add_argument("folders", nargs="+", help="site folders (site.json beside the notes)")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config key (data.tasks)")
    check.set_defaults(func=cmd_check_site)

    ex = sub.add_parser("extract", help="extract entities (and relations) from a folder of .txt notes")
    ex.add_argument("--input", required=True, help="folder of .txt notes")
    ex.add_argument("--out", required=True, help="output folder (brat) or .jsonl file (jsonl)")
    ex.add_argument("--adapter", default="", help="PEFT adapter folder; omit for zero-shot")
    ex.add_argument("--format", choices=("brat", "jsonl"), default="brat")
    ex.add_argument("--types", default="problem,treatment,test,drug", help="comma-separated entity types")
    ex.add_argument("--relation-types", default="", help="comma-separated relation types (none = entities only)")
    ex.add_argument("--re-mode", choices=RE_MODES, default=None,
                    help="given-entities: entities first, then relations among them; end-to-end: both in "
                         "one pass (default: the run config's data.re-mode)")
    ex.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None, help=_CONSTRAINED_HELP)
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config key")
    ex.set_defaults(func=cmd_extract)

    ev = sub.add_parser("evaluate", help="strict/lenient F1 of the base model or an adapter on a site's split")
    ev.add_argument("--data", required=True, help="site folder (site.json + BRAT files)")
    ev.add_argument("--adapter", default="", help="PEFT adapter folder; omit for zero-shot")
    ev.add_argument("--split", default="test", choices=("train", "validation", "test"))
    ev.add_argument("--limit", type=int, default=0, help="score at most this many instances (0 = all)")
    ev.add_argument("--json", default="", help="also write the metrics to this file")
    ev.add_argument("--re-mode", choices=RE_MODES, default=None,
                    help="given-entities: relations scored with gold entities and end to end; end-to-end: "
                         "relations found from the sentence alone (default: the run config's data.re-mode)")
    ev.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=None, help=_CONSTRAINED_HELP)
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="run-config key, e.g. --set model.name=/path/to/checkpoint")
    ev.set_defaults(func=cmd_evaluate)

    sim = sub.add_parser("simulate", help="`flwr run` on the simulation engine, stopping the local SuperLink after")
    sim.add_argument("--app", default=".", help="the Flower app folder (this project)")
    sim.add_argument("--flwr-home", default=".flwr", help="FLWR_HOME private to this run")
    sim.add_argument("--num-supernodes", type=int, default=3)
    sim.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run-config key (repeatable)")
    sim.set_defaults(func=cmd_simulate)

    dep = sub.add_parser("deploy", help="a real deployment on loopback: a SuperLink, one SuperNode per site, "
                                        "`flwr run`, then stop them all")
    dep.add_argument("--app", default=".", help="the Flower app folder (this project)")
    dep.add_argument("--site", action="append", default=[], metavar="NAME=FOLDER",
                     help="a site and its data folder (repeatable; default: the demo corpus's site-a,b,c)")
    dep.add_argument("--tls", action="store_true",
                     help="TLS with a generated CA and server certificate, and SuperNode authentication")
    dep.add_argument("--no-node-auth", action="store_true", help="with --tls: skip SuperNode authentication")
    dep.add_argument("--isolation", choices=("subprocess", "process"), default="subprocess",
                     help="the SuperLink's: process runs a separate flower-superexec beside it, as in "
                          "docker-compose.yml. Every site pins this app's digest and model.name, so its "
                          "SuperNode always runs with process isolation and `fedmedlora site-exec` beside it "
                          "(with --tls, each SuperNode's Runtime API uses TLS too)")
    dep.add_argument("--no-site-workers", action="store_true",
                     help="load the model in every ClientApp process, as Flower alone does, instead of keeping "
                          "each site's model warm in a site worker (docs/howto/hospitals.md, 'A warm site')")
    dep.add_argument("--workdir", default="", help="folder for logs, certificates, keys and FLWR_HOME "
                                                   "(default: <app>/.deploy/<date-time>)")
    dep.add_argument("--timeout", type=float, default=0, help="stop the run after this many seconds (0 = none)")
    dep.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run-config key (repeatable)")
    dep.set_defaults(func=cmd_deploy)

    run = sub.add_parser("run", help="`flwr run <app> <connection> --stream` on a running SuperLink (compose, "
                                     "across hospitals); exits 1 unless the run finished as completed")
    run.add_argument("connection", help="a SuperLink connection of $FLWR_HOME/config.toml, e.g. compose")
    run.add_argument("--app", default=".", help="the Flower app folder (this project)")
    run.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run-config key (repeatable); paths are the ServerApp's, e.g. "
                          "data.server-validation=/data/validation in compose")
    run.set_defaults(func=cmd_run)

    bundle = sub.add_parser("bundle", help="an offline install for an air-gapped node: the project, every "
                                           "dependency, torch and the embedded model as wheels, and install.sh")
    bundle.add_argument("--out", required=True, help="folder to write (new, or a previous bundle)")
    bundle.add_argument("--app", default=".", help="the project folder")
    bundle.add_argument("--torch", choices=("cpu", "cuda"), default="cpu",
                        help="torch 2.13.0's CPU build (+cpu) or PyPI's CUDA build (with its nvidia wheels)")
    bundle.add_argument("--platform", default="", help="the node's pip platform tag, e.g. manylinux_2_28_x86_64 "
                                                       "(default: this machine's)")
    bundle.add_argument("--python", default="", help="the node's Python, e.g. 3.11 (default: this one)")
    bundle.add_argument("--torch-index", default="https://download.pytorch.org/whl/cpu",
                        help="also searched for the CPU build of torch ('' = pip's configured sources only)")
    bundle.set_defaults(func=cmd_bundle)

    audit = sub.add_parser("audit-verify", help="check the hash chains and keyed end lines of a run's audit.jsonl "
                                                "and of sites' audit logs, and that both sides recorded the same "
                                                "exchanges")
    audit.add_argument("coordinator", help="the run folder's audit.jsonl")
    audit.add_argument("--site", action="append", default=[], metavar="FILE",
                       help="a site's audit log (node config audit-log; repeatable)")
    audit.add_argument("--key", action="append", default=[], metavar="FILE",
                       help="a key that sealed one of the trails: the coordinator's (run config audit-key, default "
                            "output-dir/audit.key) or a site's (node config audit-key); repeatable, each keyed "
                            "line names the key it needs by id")
    audit.set_defaults(func=cmd_audit_verify)

    mem = sub.add_parser("audit", help="memorisation audit: canary sentences in one site's training notes, the "
                                       "federation trained plainly, with DP and with SecAgg+, and each adapter's "
                                       "exposure and greedy extraction of the canaries")
    mem.add_argument("--out", required=True, help="folder for the canary site, the runs and audit.json (reused)")
    mem.add_argument("--app", default=".", help="the Flower app folder (this project)")
    mem.add_argument("--canary-site", default="", help="the site of data.sites whose notes get the canaries "
                                                       "(default: the first)")
    mem.add_argument("--repeats", default="1,16,128", help="copies of each canary, one level per number")
    mem.add_argument("--per-level", type=int, default=2, help="canaries per repetition level")
    mem.add_argument("--alternatives", type=int, default=31, help="other secrets each canary is ranked among")
    mem.add_argument("--dp-epsilon", type=float, default=8.0, help="epsilon of the dp variant over the run's rounds")
    mem.add_argument("--variants", default="plain,dp,secure-aggregation", help="runs to train (plain is needed)")
    mem.add_argument("--seed", type=int, default=0, help="seed of the canaries and their alternatives")
    mem.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                     help="override a run-config key (repeatable), as for simulate")
    mem.set_defaults(func=cmd_audit)

    site_exec = sub.add_parser("site-exec", add_help=False,
                               help="a hospital's ClientApp executor: Flower's flower-superexec (same options, "
                                    "next to a SuperNode with --isolation process) that runs only the apps "
                                    "listed in the node config's approved-apps (docs/howto/hospitals.md)")
    site_exec.set_defaults(func=cmd_site_exec)  # its options are flower-superexec's, passed on as given

    digest = sub.add_parser("app-digest", help="the SHA-256 a hospital lists in approved-apps: of the FAB `flwr "
                                               "run` builds from an app folder, or of a .fab file")
    digest.add_argument("app", nargs="?", default=".", help="an app folder (default: .) or a .fab file")
    digest.set_defaults(func=cmd_app_digest)

    keys = sub.add_parser("deploy-keys", help="certificates and SuperNode keys for the TLS compose deployment "
                                              "(docker-compose.tls.yml)")
    keys.add_argument("--out", default="deploy/certificates", help="folder to write (the overlay reads "
                                                                   "./deploy/certificates or $FEDMEDLORA_CERTS)")
    keys.add_argument("--site", action="append", default=[], metavar="NAME",
                      help="a site with a SuperNode (repeatable; default: hospital-a, hospital-b, hospital-c)")
    keys.add_argument("--host", action="append", default=[],
                      help="another name or IP the SuperLink's certificate is valid for (repeatable; always: "
                           "superlink, localhost, 127.0.0.1)")
    keys.add_argument("--no-sites", action="store_true",
                      help="only the CA, the SuperLink's certificate and the connection (across hospitals, each "
                           "hospital makes its own key pair)")
    keys.add_argument("--days", type=int, default=365, help="validity of the certificates")
    keys.set_defaults(func=cmd_deploy_keys)

    args, extra = parser.parse_known_args(argv)
    if args.command == "site-exec":
        args.superexec_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command != "site-exec":  # it logs as flower-superexec does (no line per poll of the Runtime API)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (kill, a job scheduler) unwinds like Ctrl-C, so the `finally` of a command that
    # started a SuperLink, SuperNodes or a simulation stops them instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
