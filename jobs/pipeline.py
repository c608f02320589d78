"""`ray job submit --working-dir . -- python jobs/pipeline.py --config FILE`: the whole run."""

from __future__ import annotations

import argparse
import sys

from distsel.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--output")
    args = parser.parse_args()
    extra = ["--output", args.output] if args.output else []
    sys.exit(main(["run", args.config, "--address", "auto", *extra]))
