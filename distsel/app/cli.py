"""The `distsel` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from distsel.core import __version__, console, errors, layout
from distsel.core.config import PHASES, Config, InputConfig, OutputConfig, load_config, parse_config

DESCRIPTION = """\
distsel selects the training data for a language model out of a corpus too large for one
machine: it scores every document on a Ray cluster (or a local Ray) and keeps the subset
worth training on under a budget of documents or tokens."""
EXAMPLE = "example:\n  distsel run run.yaml --set select.budget.docs=10000 --output s3://bucket/out"
#: What Ray (2.60) sets in the driver of a job that `ray job submit` started: its JobConfig.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def main(argv: list[str] | None = None) -> int:
    """The command line; every failure ends as one line `distsel: error: ...` on stderr
    (after its traceback with -v): exit status 2 for usage and configuration, else 1."""
    argv = sys.argv[1:] if argv is None else argv
    errors.conceal(*errors.userinfo(" ".join(argv)))
    args = _parser().parse_args(argv)
    console.configure(args.verbose)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("distsel: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        return _fail(exc, args.verbose)


def _fail(exc: Exception, verbose: bool) -> int:
    if verbose:
        print(errors.strip_credentials(traceback.format_exc()).rstrip(), file=sys.stderr)
    known = errors.user_error(exc)
    if known is None:
        message, status = errors.short(errors.innermost(exc)), 1
    else:
        message = " ".join(line.strip() for line in str(known).splitlines())
        status = 2 if isinstance(known, errors.ConfigError) else 1
    print(f"distsel: error: {errors.strip_credentials(message)}", file=sys.stderr)
    return status


def version() -> str:
    """The installed package's version (the source tree's where it is not installed)."""
    try:
        return metadata.version("distsel")
    except metadata.PackageNotFoundError:
        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distsel",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="more log output, Ray's own included"
    )
    parser.add_argument("--version", action="version", version=f"distsel {version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the selection a YAML configuration describes")
    _configuration_arguments(run)
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    run.add_argument(
        "--phase",
        choices=PHASES,
        default="all",
        help="all (default); score: ingest and score only; select: select from a finished "
        "scoring; mixture: score, then only the mixture search",
    )
    run.set_defaults(handler=_run)

    validate = commands.add_parser(
        "validate",
        help="check a configuration, that its inputs exist and that its output is writable, "
        "without running anything",
    )
    _configuration_arguments(validate)
    validate.set_defaults(handler=_validate)

    status = commands.add_parser(
        "status",
        help="where the run in an output stands: phase, parts done per stage, rows scored, "
        "rate and ETA, whether a live run holds it",
    )
    status.add_argument("output", help="the run's output folder or s3:// prefix")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(handler=_status)

    report = commands.add_parser("report", help=f"write OUTPUT/{layout.REPORT} for a finished run")
    report.add_argument("output", help="the run's output folder or s3:// prefix")
    report.set_defaults(handler=_report)

    demo = commands.add_parser("demo", help="select from the Python standard library's text")
    demo.add_argument("output", nargs="?", default="distsel-demo", type=Path)
    demo.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    demo.set_defaults(handler=_demo)
    return parser


def _configuration_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("config", type=Path, help="configuration file (YAML)")
    command.add_argument(
        "--set",
        action="append",
        default=[],
        dest="settings",
        metavar="KEY=VALUE",
        help="set a configuration key (dotted, as select.budget.docs=1000) before validation; "
        "the value is read as YAML (10, 0.5, true, null, [a, b]); repeatable",
    )
    command.add_argument(
        "--output", help="output folder or s3:// prefix (overrides output.path, and --set)"
    )


def overrides(settings: list[str], output: str | None = None) -> dict[str, Any]:
    """Dotted key → value of each `--set KEY=VALUE` (the value read as YAML), then --output."""
    found: dict[str, Any] = {}
    for setting in settings:
        key, equals, text = setting.partition("=")
        key = key.strip()
        if not equals or not key or not all(part.strip() for part in key.split(".")):
            raise errors.ConfigError(
                f"--set {setting}: expected KEY=VALUE, KEY a dotted path such as select.budget.docs"
            )
        try:
            found[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or errors.short(exc, with_type=False)
            raise errors.ConfigError(f"--set {setting}: not a YAML value ({problem})") from None
    if output:
        found["output.path"] = output
    return found


def _load(args: argparse.Namespace) -> Config:
    from distsel.app.manifest import credentials

    config = load_config(args.config, overrides(args.settings, args.output))
    errors.conceal(*credentials(config))
    check_job_output(config.output.path)
    return config


def check_job_output(path: str) -> None:
    """Refuse a relative output path in a Ray job (`ray job submit`). The job's working
    directory is Ray's temporary copy of --working-dir (or, without one, a folder of Ray's
    choosing) on the node that runs the driver: Ray deletes the copy, and a job submitted again
    gets a new one, so the output would be lost and could not be resumed."""
    from distsel.core.storage import is_remote

    if RAY_JOB_ENV not in os.environ or is_remote(path):
        return
    if os.path.isabs(os.path.expanduser(path.removeprefix("file://"))):
        return
    try:
        copied = "working_dir" in json.loads(os.environ[RAY_JOB_ENV])["runtime_env"]
    except (ValueError, KeyError, TypeError):
        copied = False
    where = (
        "Ray's temporary copy of --working-dir, which Ray deletes"
        if copied
        else ("a folder of Ray's choosing on the node that runs the job")
    )
    raise errors.ConfigError(
        f"output.path {path} is relative, and this run is a Ray job: it would land in the "
        f"job's working directory ({os.getcwd()}), {where}; give an absolute path that every "
        "node reaches, or an s3:// prefix (in the configuration, or with --output PATH)"
    )


def _run(args: argparse.Namespace) -> int:
    from distsel.app import api, ingest, run_record

    config = _load(args)
    ingest.check_output_apart(config)  # before the run record is written there
    try:
        stages = run_record.planned_stages(config)
    except Exception:  # noqa: BLE001 - the run names the problem itself
        stages = []
    result = run_record.keeping_record(
        config,
        args.phase,
        stages,
        lambda begin: api.run(config, args.phase, address=args.address, on_output=begin).manifest,
    )
    if args.phase == "score":
        print(summary(result, config.output.path, layout.SCORING))
    elif args.phase == "mixture":
        print(mixture_summary(result, config.output.path))
    else:
        print(summary(result, config.output.path))
        _write_report(config.output)
    return 0


def _write_report(output: OutputConfig) -> None:
    """OUTPUT/report.html; a report that cannot be written is one warning line, not a failure."""
    from distsel.app.report import write_report
    from distsel.core.storage import is_remote

    try:
        written = write_report(output.path, output.storage_options)
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded
        message = errors.short(errors.innermost(exc))
        print(
            f"distsel: warning: no report written ({message}); "
            f"`distsel report {output.path}` tries again",
            file=sys.stderr,
        )
        return
    shown = f"{output.path.rstrip('/')}/{layout.REPORT}" if is_remote(output.path) else written
    print(f"distsel: report written to {shown}")


def _validate(args: argparse.Namespace) -> int:
    from distsel.app import ingest, run_record
    from distsel.core import corpus

    config = _load(args)
    stages = run_record.planned_stages(config)
    ingest.check_output_apart(config)
    shards = ingest.list_inputs(config)
    targets = []
    if config.target.paths:
        target = config.target
        targets = corpus.list_shards(
            InputConfig(
                paths=target.paths,
                text_field=target.text_field,
                storage_options=target.storage_options,
            )
        )
    probe_output(config.output)
    print(
        f"distsel: OK: {args.config}: {len(shards)} input shard{'s' * (len(shards) != 1)}, "
        f"{len(targets)} target file{'s' * (len(targets) != 1)}, output {config.output.path} "
        f"writable; {config.select.method} with stages {', '.join(stages) or '-'}"
    )
    return 0


def probe_output(output: OutputConfig) -> None:
    """Fail, naming the output, when it cannot be written; leave nothing behind (a local
    folder that the probe had to create is removed again)."""
    from distsel.core.storage import Store

    store = Store(output.path, output.storage_options, output.retry_seconds)
    created = []
    if store.is_local:
        path = os.path.join(store.root, layout.STATE)
        while not os.path.exists(path) and os.path.dirname(path) != path:
            created.append(path)  # deepest first
            path = os.path.dirname(path)
    store.check_writable()
    for path in created:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _status(args: argparse.Namespace) -> int:
    from distsel.app import status

    found = status.collect(args.output)
    print(json.dumps(found, indent=2) if args.json else status.render(found))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from distsel.app import api, demo
    from distsel.app.report import write_report

    output = args.output.resolve()
    config = parse_config(demo.prepare(output), "demo configuration")
    manifest = api.run(config, address=args.address).manifest
    print(summary(manifest, str(output)))  # with the topic's share of pool and selection
    print(f"distsel: report written to {write_report(str(output))}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from distsel.app.report import write_report

    print(f"distsel: report written to {write_report(args.output)}")
    return 0


def summary(manifest: dict[str, Any], output: str, written: str = layout.MANIFEST) -> str:
    """A short table of what a run (or its scoring phase) did and where its output is."""
    reasons = ", ".join(f"{k} {v:,}" for k, v in manifest["rejected_by_reason"].items())
    lines = [
        f"distsel: done in {manifest['wall_seconds']:.1f} s; output in {output} ({written})",
        f"  {'documents in':<14}{manifest['input_docs']:>12,}",
        f"  {'accepted':<14}{manifest['accepted_docs']:>12,}",
        f"  {'rejected':<14}{manifest['rejected_docs']:>12,}   {reasons or '-'}   "
        f"-> {layout.REJECTED}/",
    ]
    if "selected_docs" not in manifest:
        stages = ", ".join(n for n in manifest["stages"] if n not in ("ingest", "dedup"))
        lines.append(f"  {'scored by':<14}{stages or '-':>12}   -> {layout.SCORES}/")
        return "\n".join(lines)
    lines.append(
        f"  {'selected':<14}{manifest['selected_docs']:>12,}   "
        f"~{manifest['selected_tokens_approx']:,} tokens   -> {layout.SELECTED}/"
    )
    groups = manifest.get("by_group")
    if groups:
        lines.append(f"  {groups['field']:<24}{'pool':>10}{'selected':>10}")
        for name, count in groups["pool"].items():
            lines.append(f"    {name:<22}{count:>10,}{groups['selected'].get(name, 0):>10,}")
    evaluation = manifest.get("evaluation") or {}
    lm, kl, labels = (evaluation.get(key) for key in ("ngram_lm", "kl", "labels"))
    if lm or kl:
        lines.append(f"  {'towards the target':<24}{'pool':>10}{'selected':>10}")
    if lm:
        lines.append(
            f"    {'bigram xent (nats/tok)':<22}{lm['target_xent_pool']:>10.3f}"
            f"{lm['target_xent_selection']:>10.3f}   reduction {lm['xent_reduction']:+.3f} "
            f"from random {lm['target_xent_random']:.3f}"
        )
    if kl:
        lines.append(
            f"    {'KL(target ‖ ·)':<22}{kl['kl_target_pool']:>10.3f}"
            f"{kl['kl_target_selection']:>10.3f}   reduction {kl['kl_reduction']:+.3f}"
        )
    near = (manifest.get("similarity") or {}).get("near_target_tokens")
    if (lm or kl) and near is not None:
        lines.append(f"    {'tokens near a target':<22}{'':>10}{near:>10.1%}")
    if labels:
        lines.append(f"  {labels['field'] + ' share':<24}{'pool':>10}{'selected':>10}")
        for name, share in labels["pool"].items():
            chosen = labels["selected"].get(name, 0.0)
            lines.append(f"    {name:<22}{share:>10.1%}{chosen:>10.1%}")
    return "\n".join(lines)


def mixture_summary(section: dict[str, Any], output: str) -> str:
    """The mixture search's best weights and losses against the baselines."""
    base = section["baseline_losses"]
    lines = [
        f"distsel: mixture search done in {section['wall_seconds']:.1f} s; "
        f"{output}/{layout.MIXTURE_SEARCH}",
        f"  best target loss {section['best_loss']:.4f}   uniform "
        f"{base['uniform']['target_loss']:.4f}   natural {base['natural']['target_loss']:.4f}",
    ]
    lines += [f"    {group:<22}{weight:>8.3f}" for group, weight in section["best_weights"].items()]
    return "\n".join(lines)


def job_main(phase: str) -> int:
    """Entry of the jobs/ scripts: `python jobs/<name>.py --config FILE [--output PATH]` on a
    running cluster (`ray job submit`), doing `phase` of the run."""
    parser = argparse.ArgumentParser(description=f"distsel {phase} as a Ray job")
    parser.add_argument("--config", required=True, help="configuration file (YAML)")
    parser.add_argument("--output", help="output folder or s3:// prefix (overrides output.path)")
    args = parser.parse_args()
    extra = ["--output", args.output] if args.output else []
    return main(["run", args.config, "--address", "auto", "--phase", phase, *extra])


if __name__ == "__main__":
    sys.exit(main())
