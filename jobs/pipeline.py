"""`ray job submit --working-dir . -- python jobs/pipeline.py --config FILE`: the whole run."""

import sys

from distsel.app.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("all"))
