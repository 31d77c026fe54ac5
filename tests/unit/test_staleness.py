"""A past day re-run makes the later days stale; `rebuild --from D` brings them up to date.

The state of D is built on the state of D-1 (running totals). Re-curating an old day
rewrites its inputs: every later day was built on what was there before, and says so
(``sluice.stages.staleness``), in ``sluice status`` and the view, until it is rebuilt.
"""

from __future__ import annotations

import json

import pandas as pd

from sluice.core import features as F
from sluice.core.lineage import RunContext
from sluice.edges.lake import Lake
from sluice.ops.cli import main
from sluice.stages import etl as pipeline
from sluice.stages.staleness import Write, rebuild, stale_days, stale_state
from sluice.ui.view import overview


def test_a_lake_built_in_order_has_no_stale_day(history_lake):
    assert stale_days(history_lake.settings) == {}


def test_re_curating_a_past_day_marks_it_and_every_later_day_stale_until_rebuilt(
    history_copy, ctx, capsys, monkeypatch
):
    settings, days = history_copy.settings, history_copy.days
    monkeypatch.setenv("SLUICE_LAKE_URI", settings.lake_uri)  # what the CLI reads
    lake = Lake(settings)
    uc_tables = pipeline.usecase.of(settings).tables
    features_before = lake.read_partitions(uc_tables.features, [F.day_str(d) for d in days[25:]]).to_pandas()
    fixed = days[25]
    pipeline.ingest_day(settings, fixed, ctx)
    pipeline.curate_day(settings, fixed, ctx)  # a corrected day: curated D rewritten

    stale = stale_days(settings)
    assert sorted(stale) == [F.day_str(d) for d in days[25:]]
    assert "curated/events" in stale[F.day_str(fixed)] and "rewritten" in stale[F.day_str(fixed)]
    assert stale[F.day_str(days[26])] == f"built on stale {F.day_str(fixed)}"

    # sluice status says it, with the command that fixes it; so does the view.
    assert main(["status", "--use-case", settings.use_case]) == 0
    out = capsys.readouterr().out
    assert f"STALE: the state and features of {len(days) - 25} day(s)" in out
    assert f"sluice rebuild --use-case {settings.use_case_name} --from {F.day_str(fixed)}" in out
    assert main(["status", "--json", "--use-case", settings.use_case]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["stale"]) == sorted(stale)
    page = overview(settings)
    assert page["stale"]["ok"] and sorted(page["stale"]["data"]) == sorted(stale)

    rebuilt = rebuild(settings, fixed, RunContext("unit_test", "rebuild"))
    assert rebuilt == [F.day_str(d) for d in days[25:]]
    assert stale_days(settings) == {}
    # The same events: the same features, through the same code.
    after = lake.read_partitions(uc_tables.features, [F.day_str(d) for d in days[25:]]).to_pandas()
    key = ["ds", pipeline.usecase.of(settings).key]
    pd.testing.assert_frame_equal(
        after.sort_values(key, ignore_index=True), features_before.sort_values(key, ignore_index=True)
    )


def test_rebuild_from_the_cli_clears_what_status_reported(history_copy, ctx, capsys, monkeypatch):
    settings, days = history_copy.settings, history_copy.days
    monkeypatch.setenv("SLUICE_LAKE_URI", settings.lake_uri)
    pipeline.curate_day(settings, days[-3], ctx)
    assert len(stale_days(settings)) == 3
    assert main(["rebuild", "--use-case", settings.use_case, "--from", F.day_str(days[-3])]) == 0
    assert "rebuilt the state and features of 3 day(s)" in capsys.readouterr().out
    assert stale_days(settings) == {}


def test_staleness_is_read_from_the_inputs_each_day_recorded():
    state = {"2026-01-01": Write(1, {"curated": 1}), "2026-01-02": Write(3, {"curated": 2, "state": 1}),
             "2026-01-03": Write(5, {"curated": 3, "state": 3})}
    assert stale_state(state, {"2026-01-01": Write(1, {}), "2026-01-02": Write(2, {}), "2026-01-03": Write(3, {})},
                       "state", "curated") == {}
    # state 2026-01-01 rewritten after 01-02 was built from v1: 01-02 and 01-03 are stale.
    rewritten = state | {"2026-01-01": Write(6, {"curated": 1})}
    stale = stale_state(rewritten, {"2026-01-01": Write(1, {})}, "state", "curated")
    assert sorted(stale) == ["2026-01-02", "2026-01-03"] and "v6" in stale["2026-01-02"]
