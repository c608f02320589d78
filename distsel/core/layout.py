"""The output folder's layout: the one place that spells its folders, files, markers and part
names. Every path here is relative to OUTPUT (a local folder or an object-store prefix).

    OUTPUT/
      manifest.json                 a finished run's summary (phase all)
      scoring.json                  a finished scoring phase's summary (phase score)
      report.html                   distsel report's page
      docs/<part>                   the accepted documents, a shard cut into Parquet parts
      rejected/<shard>.parquet      the rows a shard rejected, with their reasons
      rejected/duplicate_id.parquet the later copies of an id (input.id_field)
      rejected/near_duplicate.parquet   the near duplicates that `dedup:` quarantined
      scores/<stage>/<part>         a stage's outputs for one part (id + its columns)
      selected/<part stem>.<format> the chosen rows of each part (parquet, jsonl[.gz|.zst])
      clusters/centroids.npy        the cluster stage's centroids, (k, dim)
      clusters/centroid_distances.npy   and their (k, k) distances
      proxy/                        the proxy LM trained for the run (distsel.methods.proxy)
      mixture/search.json           a finished mixture search (phase mixture)
      mixture/tokens/<group>.npy    a group's token stream; tokens/meta.json lists them
      mixture/eval/<set>.npy        the target and heldout token streams
      mixture/runs/<key>.json       one trained mixture's metrics
      mixture/trials/<name>.json    a search's finished trials
      _input/<name>[.jsonl]         documents the Python API was given, staged once
      _state/                       what lets a rerun resume, and distsel status read a run
        input.json                  the input settings the output was made from
        part_size.json              the rows per part chosen at the first ingest
        stages.json                 the stages of the last scoring, in order
        run.json                    the run record of `distsel run`
        progress/<name>.json        the lines of a long call in flight
        ingest/<shard>.json         a shard's done marker: its parts and counts
        ids/<part>                  a part's ids by group, for the duplicate-id check
        duplicates-<digest>.parquet the duplicate-id check of one part list
        near-duplicates-<digest>.parquet  the near duplicates of one part list and dedup setting
        minhash/<digest>/<part>.*   a part's MinHash signatures and band keys, while dedup runs
        minhash/<digest>/pairs|edges/  its candidate pairs and graph edges, while dedup runs
        semdedup/<digest>/<part>    a part's cluster members and embeddings, while dedup runs
        <stage>/_fingerprint.json   a stage's settings, written when its scoring starts
        <stage>/<part>.json         a part's done marker (rows, bytes, version, seconds, node)
        <stage>/fitted.npz, fitted.json   a stage's fit: its arrays, then the rest
        quad/state.json, quad/saves/<n>.npz  QUAD's bandit state; what each save added
        quad/chosen/<part>.npy               its finished selection's rows of each part
        .probe-<hex>                the writability probe, removed at once

A part is named `<safe shard key>[-<version>]-NNNNN.parquet`.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
SCORING = "scoring.json"
REPORT = "report.html"

DOCS = "docs"
REJECTED = "rejected"
SCORES = "scores"
SELECTED = "selected"
CLUSTERS = "clusters"
PROXY = "proxy"
MIXTURE = "mixture"
STAGED = "_input"
STATE = "_state"

PART_SUFFIX = ".parquet"
MARKER_SUFFIX = ".json"

REJECTED_DUPLICATE_IDS = f"{REJECTED}/duplicate_id{PART_SUFFIX}"
REJECTED_NEAR_DUPLICATES = f"{REJECTED}/near_duplicate{PART_SUFFIX}"
CENTROIDS = f"{CLUSTERS}/centroids.npy"
CENTROID_DISTANCES = f"{CLUSTERS}/centroid_distances.npy"
MIXTURE_SEARCH = f"{MIXTURE}/search.json"
MIXTURE_TOKENS_META = f"{MIXTURE}/tokens/meta.json"

INPUT = f"{STATE}/input.json"
PART_SIZE = f"{STATE}/part_size.json"
STAGE_ORDER = f"{STATE}/stages.json"
RUN_RECORD = f"{STATE}/run.json"
PROGRESS = f"{STATE}/progress"
INGEST = f"{STATE}/ingest"
IDS = f"{STATE}/ids"
MINHASH = f"{STATE}/minhash"
SEMDEDUP = f"{STATE}/semdedup"
QUAD_STATE = f"{STATE}/quad/state.json"
QUAD_SAVES = f"{STATE}/quad/saves"


def quad_save(index: int) -> str:
    """What Quad's `index`-th checkpoint added to its selection and scored draws (.npz)."""
    return f"{QUAD_SAVES}/{index:09d}.npz"


def quad_chosen(part: str) -> str:
    """The rows of `part` Quad's finished selection holds (.npy), written by its shards."""
    return f"{STATE}/quad/chosen/{part}.npy"


DUPLICATES_PREFIX = "duplicates"
NEAR_DUPLICATES_PREFIX = "near-duplicates"
FINGERPRINT_NAME = "_fingerprint.json"


def basename(path: str) -> str:
    """The last name of `path`: what a listing of its folder calls it."""
    return path.rsplit("/", 1)[-1]


def part_name(safe_key: str, version: str, index: int) -> str:
    """Part `index` of a shard: a changed shard (another `version`) gets new part names, so no
    stage output of the old content is ever taken for the new one's."""
    versioned = f"-{version}" if version else ""
    return f"{safe_key}{versioned}-{index:05d}{PART_SUFFIX}"


def docs(part: str) -> str:
    """A document part."""
    return f"{DOCS}/{part}"


def rejected(safe_key: str) -> str:
    """A shard's rejected rows."""
    return f"{REJECTED}/{safe_key}{PART_SUFFIX}"


def scores(stage: str, part: str | None = None) -> str:
    """A stage's scores folder, or its scores of one part."""
    return f"{SCORES}/{stage}" if part is None else f"{SCORES}/{stage}/{part}"


def selected(name: str) -> str:
    """A selected file."""
    return f"{SELECTED}/{name}"


def proxy(name: str) -> str:
    """A file of the trained proxy's folder."""
    return f"{PROXY}/{name}"


def mixture_tokens(stem: str) -> str:
    """A group's token stream."""
    return f"{MIXTURE}/tokens/{stem}.npy"


def mixture_eval(name: str) -> str:
    """An evaluation set's token stream (target, heldout)."""
    return f"{MIXTURE}/eval/{name}.npy"


def mixture_run(key: str) -> str:
    """One trained mixture's metrics."""
    return f"{MIXTURE}/runs/{key}.json"


def mixture_trials(name: str) -> str:
    """A search's finished trials."""
    return f"{MIXTURE}/trials/{name}.json"


def staged(name: str) -> str:
    """Documents the Python API was given."""
    return f"{STAGED}/{name}"


def state(*names: str) -> str:
    """A path under _state/."""
    return "/".join((STATE, *names))


def progress(name: str) -> str:
    """A long call's progress file."""
    return f"{PROGRESS}/{name}.json"


def ingest_marker(safe_key: str) -> str:
    """A shard's done marker."""
    return f"{INGEST}/{safe_key}{MARKER_SUFFIX}"


def ids(part: str) -> str:
    """A part's ids, for the duplicate-id check."""
    return f"{IDS}/{part}"


def duplicates(digest: str) -> str:
    """The duplicate-id check of the part list with `digest`."""
    return state(f"{DUPLICATES_PREFIX}-{digest}{PART_SUFFIX}")


def is_duplicates(name: str) -> bool:
    """Whether `name`, in _state/, is a duplicate-id check."""
    return name.startswith(DUPLICATES_PREFIX)


def near_duplicates(digest: str) -> str:
    """The near duplicates found in the part list and dedup setting with `digest`."""
    return state(f"{NEAR_DUPLICATES_PREFIX}-{digest}{PART_SUFFIX}")


def is_near_duplicates(name: str) -> bool:
    """Whether `name`, in _state/, is a near-duplicate check."""
    return name.startswith(NEAR_DUPLICATES_PREFIX)


def minhash_signatures(digest: str, part: str) -> str:
    """A part's MinHash signatures (.npy) for the near-duplicate check with `digest`."""
    return f"{MINHASH}/{digest}/{part}.npy"


def minhash_bands(digest: str, part: str) -> str:
    """A part's band keys, one row group per bucket group, written after its signatures."""
    return f"{MINHASH}/{digest}/{part}"


def semdedup_members(digest: str, part: str) -> str:
    """A part's cluster members (cluster, distance, node, embedding) for the semantic check."""
    return f"{SEMDEDUP}/{digest}/{part}"


def minhash_pairs(digest: str, group: int) -> str:
    """A bucket group's candidate pairs, one row group per verification group."""
    return f"{MINHASH}/{digest}/pairs/{group:05d}{PART_SUFFIX}"


def minhash_edges(digest: str, step: str, source: int) -> str:
    """The edges that task `source` of a connected-components step wrote, one row group per
    edge group."""
    return f"{MINHASH}/{digest}/edges/{step}/{source:05d}{PART_SUFFIX}"


def fingerprint(stage: str) -> str:
    """A stage's settings, written when its scoring starts."""
    return state(stage, FINGERPRINT_NAME)


def marker_name(part: str) -> str:
    """A part's done marker, in its stage's state folder."""
    return f"{part}{MARKER_SUFFIX}"


def marker(stage: str, part: str) -> str:
    """A stage's done marker of one part."""
    return state(stage, marker_name(part))


def marked_part(name: str) -> str | None:
    """The part that the marker `name` (in a stage's state folder) marks, else None."""
    if name.endswith(PART_SUFFIX + MARKER_SUFFIX):
        return name.removesuffix(MARKER_SUFFIX)
    return None


def fit_arrays(stage: str) -> str:
    """A stage's fitted arrays."""
    return state(stage, "fitted.npz")


def fit_record(stage: str) -> str:
    """A stage's fit (inputs, other values, summary), written last."""
    return state(stage, "fitted.json")


def probe(token: str) -> str:
    """The writability probe."""
    return state(f".probe-{token}")
