"""`ray job submit --working-dir . -- python jobs/mixture.py --config FILE`: the mixture-weight
search only (OUTPUT/mixture/search.json); `select.method: mixture` later samples by its weights."""

import sys

from distsel.app.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("mixture"))
