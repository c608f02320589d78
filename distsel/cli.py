"""The `distsel` command."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from distsel import console, errors
from distsel.config import PHASES, load_config, parse_config


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distsel", description=__doc__)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="more log output, Ray's own included"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the selection a YAML configuration describes")
    run.add_argument("config", type=Path, help="configuration file (YAML)")
    run.add_argument("--output", help="output folder or s3:// prefix (overrides output.path)")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    run.add_argument(
        "--phase",
        choices=PHASES,
        default="all",
        help="all (default); score: ingest and score only; select: select from a finished "
        "scoring; mixture: score, then only the mixture search",
    )
    run.set_defaults(handler=_run)

    report = commands.add_parser("report", help="write OUTPUT/report.html for a finished run")
    report.add_argument("output", help="the run's output folder or s3:// prefix")
    report.set_defaults(handler=_report)

    demo = commands.add_parser("demo", help="select from the Python standard library's text")
    demo.add_argument("output", nargs="?", default="distsel-demo", type=Path)
    demo.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local Ray)")
    demo.set_defaults(handler=_demo)
    return parser


def _run(args: argparse.Namespace) -> int:
    from distsel import pipeline

    overrides = {"output.path": args.output} if args.output else {}
    config = load_config(args.config, overrides)
    errors.conceal(*pipeline.credentials(config))
    result = pipeline.run(config, address=args.address, phase=args.phase)
    if args.phase == "score":
        print(summary(result, config.output.path, "scoring.json"))
    elif args.phase == "mixture":
        print(mixture_summary(result, config.output.path))
    else:
        print(summary(result, config.output.path))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from distsel import demo, pipeline
    from distsel.report import write_report

    output = args.output.resolve()
    config = parse_config(demo.prepare(output), "demo configuration")
    manifest = pipeline.run(config, address=args.address)
    print(summary(manifest, str(output)))  # with the topic's share of pool and selection
    print(f"distsel: report written to {write_report(str(output))}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from distsel.report import write_report

    print(f"distsel: report written to {write_report(args.output)}")
    return 0


def summary(manifest: dict[str, Any], output: str, written: str = "manifest.json") -> str:
    """A short table of what a run (or its scoring phase) did and where its output is."""
    reasons = ", ".join(f"{k} {v:,}" for k, v in manifest["rejected_by_reason"].items())
    lines = [
        f"distsel: done in {manifest['wall_seconds']:.1f} s; output in {output} ({written})",
        f"  {'documents in':<14}{manifest['input_docs']:>12,}",
        f"  {'accepted':<14}{manifest['accepted_docs']:>12,}",
        f"  {'rejected':<14}{manifest['rejected_docs']:>12,}   {reasons or '-'}   -> rejected/",
    ]
    if "selected_docs" not in manifest:
        stages = ", ".join(name for name in manifest["stages"] if name != "ingest")
        lines.append(f"  {'scored by':<14}{stages or '-':>12}   -> scores/")
        return "\n".join(lines)
    lines.append(
        f"  {'selected':<14}{manifest['selected_docs']:>12,}   "
        f"~{manifest['selected_tokens_approx']:,} tokens   -> selected/"
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
        f"{output}/mixture/search.json",
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
