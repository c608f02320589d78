"""Scoring stages, looked up by name; their modules load only when a run uses them."""

from __future__ import annotations

from importlib import import_module

from distsel.errors import DistselError
from distsel.stage import Stage

STAGE_CLASSES = {
    "stats": "distsel.scoring.stats:TextStatsStage",
    "dsir": "distsel.scoring.dsir:DsirStage",
    "embed": "distsel.scoring.embed:EmbedStage",
    "similarity": "distsel.scoring.similarity:SimilarityStage",
    "betr": "distsel.scoring.similarity:BetrStage",
    "classifier": "distsel.scoring.classifier:ClassifierStage",
    "perplexity": "distsel.scoring.proxy:PerplexityStage",
    "influence": "distsel.scoring.influence:InfluenceStage",
    "cluster": "distsel.clustering:ClusterStage",
}


def stage_class(name: str) -> type[Stage]:
    if name not in STAGE_CLASSES:
        known = ", ".join(sorted(STAGE_CLASSES))
        raise DistselError(f"stages.{name}: unknown stage (known: {known})")
    module, attribute = STAGE_CLASSES[name].split(":")
    return getattr(import_module(module), attribute)


def stage_for_column(column: str) -> str:
    """The stage that writes score `column` (its declared outputs, or `<stage>_...`)."""
    for name in STAGE_CLASSES:
        if column == name or column.startswith(f"{name}_"):
            return name
    for name in STAGE_CLASSES:
        if column in stage_class(name).output_columns:
            return name
    raise DistselError(f"no stage writes a score column named '{column}'")
