"""`ray job submit --working-dir . -- python jobs/selection.py --config FILE`: selection only, from
the scores a finished jobs/scoring.py left in the same output (an error names what is missing)."""

import sys

from distsel.app.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("select"))
