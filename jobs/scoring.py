"""`ray job submit --working-dir . -- python jobs/scoring.py --config FILE`: ingest and score only
(OUTPUT/scores/, OUTPUT/scoring.json); jobs/selection.py selects from it later."""

import sys

from distsel.app.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("score"))
