"""Keep the correct traces whose aggregate step score clears the threshold (or, in `outcome` mode,
every correct one), at most `max_per_problem` per problem."""
from __future__ import annotations

from components.config import RunConfig
from components.artifacts import store
from components.labeling.filtering import select
from components.stages import Stage

STAGE = Stage.of(__name__, metrics="filter_traces",
              summary=("kept {kept:,} of {traces:,} traces", "{kept_flawed_share:.1%} flawed",
                       "outcome-only would keep {outcome_only_kept:,}, {outcome_only_flawed_share:.1%} flawed",
                       "{kept_rationalized:,} rationalized ({kept_rationalized_flawed_share:.1%} flawed)"))


def run(cfg: RunConfig, out_uri: str, scored_uri: str, round_idx: int) -> dict:
    kept, stats = select(store.read_rows(scored_uri), cfg.filter)
    # The source that actually labelled the steps (round 1 of a PRM source falls back), not the configured one.
    source = store.read_manifest(scored_uri).get("label_source", cfg.scoring.label_source)
    store.write_rows(kept, out_uri, {"stage": "filter", "round": round_idx, "filter": cfg.filter.model_dump(),
                                     "label_source": source, "source": scored_uri, "metrics": stats})
    return stats
