"""Drift report: verdicts on synthetic frames, the summary parser, the early-retraining rule,
alerts posted to a real local HTTP server, idempotent history rows, columns that cannot be
compared (all null, constant), and the whole drift_report day on a lake of its own."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sluice.core.lineage import RunContext
from sluice.core.usecase import load_use_case
from sluice.edges import alerts
from sluice.edges.lake import Lake
from sluice.stages import monitoring
from sluice.stages.monitoring import current as C
from sluice.stages.monitoring import drift as D
from sluice.stages.monitoring import early_retrain as E
from sluice.stages.monitoring import reference as R
from sluice.stages.monitoring import report as P
from sluice.stages.monitoring import sampling as S
from sluice.tables import DRIFT_HISTORY, PARTITION_COLUMN

UC = load_use_case("churn")  # the reference use case (what the settings fixture works on)
FEATURE_COLUMNS = UC.feature_columns
SPEND = ["spend_7d", "spend_30d", "spend_90d", "spend_per_order_90d"]


# -- synthetic frames ---------------------------------------------------------------------------
def synthetic(n: int, seed: int, *, spend_factor: float = 1.0, device_missing: float = 0.0) -> pd.DataFrame:
    """``n`` customers with every feature column and a score, shaped like the simulator's."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({UC.key: np.arange(n, dtype=np.int64)})
    engagement = rng.beta(2, 3, n)
    for col in FEATURE_COLUMNS:
        if col in UC.categorical:
            frame[col] = rng.choice(list(UC.vocabulary(col)), n).astype(object)
        elif col.startswith("spend"):
            frame[col] = np.round(rng.lognormal(3.0, 0.6, n) * (1 + engagement) * spend_factor, 2)
        elif col.startswith(("sessions_trend",)):
            frame[col] = rng.gamma(4, 0.25, n)
        elif "minutes" in col:
            frame[col] = rng.gamma(2, 20, n) * (1 + engagement)
        else:
            frame[col] = rng.poisson(3 + 10 * engagement).astype(np.int32)
    frame.loc[rng.random(n) < device_missing, "device"] = None
    frame[P.PREDICTION] = 1 / (1 + np.exp(3 * engagement - 1 + rng.normal(0, 0.3, n)))
    return frame


def evidently(reference: pd.DataFrame, current: pd.DataFrame) -> P.DriftRun:
    """A real Evidently run over the use case's features, as drift_report runs it."""
    return P.run_report(reference, current, columns=UC.feature_columns, categorical=UC.categorical)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return synthetic(3000, seed=1)


@pytest.fixture(scope="module")
def same_report(reference) -> P.DriftRun:
    return evidently(reference, synthetic(3000, seed=2))


@pytest.fixture(scope="module")
def shifted_report(reference) -> P.DriftRun:
    """Spend x1.6, device 60 % missing, and scores shifted up by 0.3."""
    current = synthetic(3000, seed=3, spend_factor=1.6, device_missing=0.6)
    current[P.PREDICTION] = np.clip(current[P.PREDICTION] + 0.3, 0, 1)
    return evidently(reference, current)


def test_identical_distributions_show_no_drift(same_report) -> None:
    assert same_report.skipped == {}
    summary = P.drift_summary(same_report.dict(), same_report.skipped)
    assert summary == same_report.summary()
    assert summary.n_columns == len(FEATURE_COLUMNS) == 23
    assert summary.share == 0.0 and summary.drifted_columns == []
    assert not summary.prediction_drifted
    assert max(summary.scores.values()) < 0.1
    row = D.history_row("2026-03-01", summary, rows=3000, reference_rows=3000, model_version="1",
                        reference_feature_version=7, report_uri="file:///r.html", threshold=0.3)
    assert row["alert"] is False and json.loads(row["drifted_columns"]) == []
    assert json.loads(row["skipped_columns"]) == {}


def test_shifted_spend_and_a_mostly_missing_device_are_detected(shifted_report) -> None:
    summary = shifted_report.summary()
    assert set(summary.drifted_columns) == {*SPEND, "device"}
    assert summary.missing_drifted == ["device"], "device keeps its distribution: the missing share is what moved"
    assert summary.share == pytest.approx(5 / 23)
    assert all(summary.scores[c] > 0.1 for c in SPEND)
    row = D.history_row("2026-03-01", summary, rows=3000, reference_rows=3000, model_version="1",
                        reference_feature_version=7, report_uri="u", threshold=0.2)
    assert row["alert"] is True
    assert D.history_row("2026-03-01", summary, rows=1, reference_rows=1, model_version="1",
                         reference_feature_version=7, report_uri="u", threshold=0.3)["alert"] is False


def test_prediction_drift_is_reported_apart_from_the_feature_share(same_report, shifted_report) -> None:
    assert shifted_report.summary().prediction_drifted
    assert not same_report.summary().prediction_drifted
    assert P.PREDICTION not in shifted_report.summary().drifted_columns


# -- columns that cannot be compared ---------------------------------------------------------------
def test_evidently_alone_refuses_an_all_null_column() -> None:
    """The bug: a nullable field all null on a day made drift_report fail in Evidently."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference, current = synthetic(500, seed=1), synthetic(500, seed=2).assign(device=None)
    definition = DataDefinition(numerical_columns=UC.numeric_features, categorical_columns=UC.categorical)
    with pytest.raises(ValueError, match="An empty column 'device' was provided"):
        Report([DataDriftPreset(columns=FEATURE_COLUMNS)]).run(
            Dataset.from_pandas(current[FEATURE_COLUMNS], data_definition=definition),
            Dataset.from_pandas(reference[FEATURE_COLUMNS], data_definition=definition),
        )


def test_an_all_null_device_on_the_day_is_reported_and_drifts_by_its_missing_share(reference) -> None:
    """Device all null today (and, besides, a column all null and one constant on both sides)."""
    ref = reference.assign(plan="basic", tickets_90d=np.nan)
    current = synthetic(3000, seed=2).assign(device=None, plan="basic", tickets_90d=np.nan)
    run = evidently(ref, current)  # no ValueError
    assert run.skipped == {"tickets_90d": "all null", "plan": "constant", "device": "all null in current"}
    summary = run.summary()
    assert summary.skipped_columns == run.skipped
    assert summary.drifted_columns == ["device"] and summary.missing_drifted == ["device"], (
        "a column that turns all null drifts, as one that turns mostly null does")
    assert summary.n_columns == len(FEATURE_COLUMNS) - 2, "all null / constant on both sides: out of the share"
    assert summary.share == pytest.approx(1 / 21)
    assert not {"device", "plan", "tickets_90d"} & set(summary.scores), "no distribution test for them"
    assert "device" in run.snapshot.get_html_str(as_iframe=False)  # the report still renders, device in it
    row = D.history_row("2026-03-01", summary, rows=3000, reference_rows=3000, model_version="1",
                        reference_feature_version=7, report_uri="u", threshold=0.3)
    assert json.loads(row["skipped_columns"]) == run.skipped and json.loads(row["drifted_columns"]) == ["device"]
    assert (row["n_columns"], row["alert"]) == (21, False)


def test_an_all_null_reference_column_and_a_column_turned_constant(reference) -> None:
    ref = reference.assign(device=None)
    current = synthetic(3000, seed=2).assign(region="eu")  # constant today only: a real change, compared
    run = evidently(ref, current)
    assert run.skipped == {"device": "all null in reference"}
    summary = run.summary()
    assert set(summary.drifted_columns) == {"region", "device"} and summary.missing_drifted == ["device"]
    assert summary.n_columns == len(FEATURE_COLUMNS) and summary.scores["region"] > 0.1


def test_unusable_columns_are_found_with_their_reason() -> None:
    ref = pd.DataFrame({"a": [1.0, 2.0], "b": [None, None], "c": ["x", "x"], "d": [3, 3], "e": [np.nan, 1.0],
                        "f": ["x", None]})
    cur = pd.DataFrame({"a": [np.nan, np.nan], "b": [None, None], "c": ["x", None], "d": [3, 4], "e": [1.0, 1.0],
                        "f": ["y", "y"]})
    assert P.unusable_columns(ref, cur, list("abcdef")) == {"a": "all null in current", "b": "all null",
                                                            "c": "constant", "e": "constant"}
    assert P.unusable_columns(cur, ref, ["a"]) == {"a": "all null in reference"}


# -- the summary parser ----------------------------------------------------------------------
def _test(kind: str, column: str, status: str) -> dict:
    return {"status": status, "metric_config": {"params": {"type": f"evidently:metric_v2:{kind}", "column": column}}}


def test_summary_parser_on_a_hand_written_report() -> None:
    report = {
        "metrics": [{"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a"}, "value": 0.4},
                    {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1.0}}],
        "tests": [
            _test("ValueDrift", "a", "FAIL"),
            _test("ValueDrift", "b", "SUCCESS"),
            _test("ValueDrift", "c", "SUCCESS"),
            _test("ValueDrift", "d", "SUCCESS"),
            _test("ValueDrift", "score", "FAIL"),
            _test("MissingValueCount", "c", "SUCCESS"),
            _test("MissingValueCount", "c", "FAIL"),  # one of its two bounds
            {"status": "FAIL", "metric_config": {"params": {"type": "evidently:metric_v2:DriftedColumnsCount"}}},
        ],
    }
    summary = P.drift_summary(report)
    assert (summary.share, summary.drifted_columns, summary.prediction_drifted) == (0.5, ["a", "c"], True)
    assert summary.n_columns == 4 and summary.scores == {"a": 0.4} and summary.missing_drifted == ["c"]
    assert summary.skipped_columns == {}


def test_summary_parser_judges_a_skipped_column_by_its_missing_share_alone() -> None:
    report = {"metrics": [], "tests": [
        _test("ValueDrift", "a", "SUCCESS"),
        _test("ValueDrift", "b", "FAIL"),
        _test("MissingValueCount", "a", "SUCCESS"),
        _test("MissingValueCount", "b", "SUCCESS"),
        _test("MissingValueCount", "n", "FAIL"),  # all null today, was not: drifted, by its missing share
        _test("MissingValueCount", "k", "SUCCESS"),  # constant, as it was: no verdict, out of the share
    ]}
    summary = P.drift_summary(report, {"n": P.ALL_NULL_CURRENT, "k": P.CONSTANT})
    assert (summary.share, summary.n_columns, summary.drifted_columns) == (2 / 3, 3, ["b", "n"])
    assert summary.missing_drifted == ["n"] and summary.skipped_columns == {"n": "all null in current", "k": "constant"}
    everything_skipped = {"metrics": [], "tests": [_test("MissingValueCount", "k", "SUCCESS")]}
    assert P.drift_summary(everything_skipped, {"k": P.ALL_NULL}).n_columns == 0


def test_summary_parser_refuses_a_report_without_verdicts() -> None:
    with pytest.raises(monitoring.DriftError, match="include_tests=True"):
        P.drift_summary({"metrics": [], "tests": []})
    with pytest.raises(monitoring.DriftError, match="include_tests=True"):
        P.drift_summary({"metrics": [], "tests": []}, {"device": P.ALL_NULL})


# -- reference and sampling -----------------------------------------------------------------------
def test_reference_spec_reads_the_tags_retrain_sets() -> None:
    tags = {"feature_table_version": "41", "training_windows": json.dumps(
        {"train": ["2026-01-01", "2026-01-09"], "validation": ["2026-01-10", "2026-01-12"],
         "holdout": ["2026-01-13", "2026-01-19"]})}
    assert R.ReferenceSpec.from_tags("3", tags) == R.ReferenceSpec("3", 41, ("2026-01-13", "2026-01-19"))
    with pytest.raises(monitoring.DriftError, match="does not record the data it was judged on"):
        R.ReferenceSpec.from_tags("3", {"feature_table_version": "41"})


def test_allocation_is_proportional_and_sampling_is_seeded() -> None:
    assert S.allocate({"a": 100, "b": 300}, 40) == {"a": 10, "b": 30}
    assert sum(S.allocate({"a": 7, "b": 7, "c": 7}, 10).values()) == 10
    assert S.allocate({"a": 5, "b": 3}, 40) == {"a": 5, "b": 3}
    first, again = S.sample_indices(1000, 50, 0, 9), S.sample_indices(1000, 50, 0, 9)
    assert (first == again).all() and len(set(first.tolist())) == 50
    assert not (first == S.sample_indices(1000, 50, 1, 9)).all()
    ids = S.sample_ids(pa.array([5, 3, 1, 4, 2]), 3, 0)
    assert ids.equals(S.sample_ids(pa.chunked_array([[1, 2], [3, 4, 5]]), 3, 0)), "the order ids come in does not matter"
    assert len(set(ids.to_pylist())) == 3
    assert S.sample_ids(pa.array([2, 1]), 5, 0).to_pylist() == [1, 2]
    # String keys (a use case may have them) are sampled the same way.
    keys = S.sample_ids(pa.array(["C5", "C3", "C1", "C4", "C2"]), 3, 0)
    assert keys.equals(S.sample_ids(pa.chunked_array([["C1", "C2"], ["C3", "C4", "C5"]]), 3, 0))
    assert keys.to_pylist() == [f"C{i}" for i in ids.to_pylist()]


# -- early retraining ------------------------------------------------------------------------------
TODAY = dt.date(2026, 3, 10)


def _history(shares: dict[int, float]) -> list[dict]:
    """Rows for the days TODAY - offset."""
    return [{PARTITION_COLUMN: (TODAY - dt.timedelta(days=o)).isoformat(), "drift_share": s} for o, s in shares.items()]


@pytest.mark.parametrize(
    ("shares", "last_trigger", "expected", "why"),
    [
        ({}, None, False, "on 0 of the 5 days"),
        ({0: 0.5, 1: 0.5}, None, False, "on 2 of the 5 days"),
        ({0: 0.5, 2: 0.5, 4: 0.5}, None, True, "on 3 of the 5 days"),
        ({0: 0.5, 1: 0.5, 5: 0.5}, None, False, "on 2 of the 5 days"),  # 5 days ago is outside the window
        ({0: 0.5, 1: 0.3, 2: 0.5, 3: 0.5}, None, True, "on 3 of the 5 days"),  # 0.3 is not over 0.3
        ({0: 0.5, 1: 0.3, 2: 0.5}, None, False, "on 2 of the 5 days"),
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY - dt.timedelta(days=6), False, "cooldown 7 days: not before 2026-03-11"),
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY, False, "triggered on 2026-03-10"),  # a re-run of the day
        ({0: 0.5, 1: 0.5, 2: 0.5}, TODAY - dt.timedelta(days=7), True, "on 3 of the 5 days"),
    ],
)
def test_should_retrain_early(shares, last_trigger, expected, why) -> None:
    decision = E.should_retrain_early(_history(shares), TODAY, k=3, n=5, cooldown_days=7, last_trigger=last_trigger,
                                      threshold=0.3)
    assert decision.trigger is expected
    assert why in decision.reason


def test_should_retrain_early_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="k <= n"):
        E.should_retrain_early([], TODAY, k=6, n=5)
    with pytest.raises(ValueError, match="after"):
        E.should_retrain_early([], TODAY, last_trigger=TODAY + dt.timedelta(days=1))


def test_policy_reads_the_environment_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    load_policy = monitoring.load_policy
    assert (load_policy().drift_share_threshold, load_policy().performance_roc_auc_floor) == (0.3, 0.7)
    monkeypatch.setenv("SLUICE_DRIFT_SHARE_THRESHOLD", "0.25")
    monkeypatch.setenv("SLUICE_PERFORMANCE_ROC_AUC_FLOOR", "0.8")
    policy = load_policy()
    assert (policy.drift_share_threshold, policy.performance_roc_auc_floor) == (0.25, 0.8)
    assert isinstance(policy, monitoring.DriftPolicy)
    monkeypatch.setenv("SLUICE_DRIFT_SHARE_THRESHOLD", "1.5")
    with pytest.raises(ValueError, match="less than or equal to 1"):
        load_policy()


# -- alerts -------------------------------------------------------------------------------------
DRIFT = {"ds": "2026-03-10", "drift_share": 0.375, "n_columns": 24, "drifted_columns": ["spend_7d", "device"],
         "prediction_drifted": True, "model_version": "3", "report_uri": "file:///r.html", "threshold": 0.3,
         "alert": True}
PERFORMANCE = {"ds": "2026-02-08", "evaluated_on": "2026-03-10", "evaluated": True, "model_version": "2",
               "roc_auc": 0.61, "pr_auc": 0.2, "rows": 900, "roc_auc_floor": 0.7, "alert": True}


def test_alert_payload_says_why() -> None:
    payload = alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE, run_id="r1")
    assert payload is not None
    assert payload["reasons"] == [
        "data drift on 2026-03-10: 38% of 24 feature columns drifted (threshold 30%): spend_7d, device",
        "realised ROC-AUC 0.610 of model v2 on 2026-02-08 (evaluated on 2026-03-10) is below the floor 0.700",
    ]
    assert payload["text"].startswith("[sluice] drift_report 2026-03-10: data drift")
    assert payload["drift"]["drifted_columns"] == ["spend_7d", "device"] and payload["performance"]["roc_auc"] == 0.61
    assert alerts.alert_payload("2026-03-10", {**DRIFT, "alert": False}, {"evaluated": False}) is None
    only_perf = alerts.alert_payload("2026-03-10", {**DRIFT, "alert": False}, PERFORMANCE)
    assert only_perf is not None and len(only_perf["reasons"]) == 1


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"conn_type": "https", "host": "hooks.example.com", "schema": "services/T0/B0/x"},
         "https://hooks.example.com/services/T0/B0/x"),
        ({"conn_type": "http", "host": "127.0.0.1", "port": 8080, "schema": "alert"}, "http://127.0.0.1:8080/alert"),
        ({"conn_type": "http", "host": "https://hooks.example.com", "schema": "/a/b"}, "https://hooks.example.com/a/b"),
        ({"conn_type": "generic", "host": "x", "extra": {"url": "https://h.example/p?k=1"}}, "https://h.example/p?k=1"),
        ({"conn_type": "generic", "host": "h.example"}, "https://h.example"),
    ],
)
def test_webhook_url_from_connection_fields(fields: dict, url: str) -> None:
    assert alerts.webhook_url(**fields) == url


def test_webhook_url_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="http"):
        alerts.webhook_url(conn_type="generic", host=None, extra={"url": "file:///etc/passwd"})
    with pytest.raises(ValueError, match="neither a host"):
        alerts.webhook_url(conn_type="http", host=None)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list]]:
    """A real HTTP server on 127.0.0.1 that records what is POSTed; /fail answers 500."""
    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(500 if self.path == "/fail" else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_send_alert_posts_json_to_the_webhook(webhook) -> None:
    base, received = webhook
    payload = alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE)
    assert payload is not None
    host, port = base.removeprefix("http://").split(":")
    url = alerts.webhook_url(conn_type="http", host=host, port=int(port), schema="hooks/drift")
    assert alerts.send_alert(url, payload) == 200
    assert received == [("/hooks/drift", "application/json", payload)]
    with pytest.raises(alerts.AlertError, match="answered 500"):
        alerts.send_alert(f"{base}/fail", payload)
    server_gone = f"http://127.0.0.1:{_free_port()}/x"
    with pytest.raises(alerts.AlertError, match="unreachable"):
        alerts.send_alert(server_gone, payload, timeout=2)


def test_send_alert_waits_at_most_the_http_timeout_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook that accepts the connection and never answers: the POST gives up after SLUICE_TIMEOUT_HTTP_S."""
    import socket
    import time

    monkeypatch.setenv("SLUICE_TIMEOUT_HTTP_S", "0.5")
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
        started = time.monotonic()
        with pytest.raises(alerts.AlertError, match="unreachable"):
            alerts.send_alert(f"http://127.0.0.1:{hung.getsockname()[1]}/x", {"text": "t"})
        assert time.monotonic() - started < 5


def test_reason_keys_are_stable_across_reruns_and_sent_reasons_are_left_out() -> None:
    """The key is the kind of alert and its day, not the text: a re-run with other numbers finds it again."""
    from sluice.stages.monitoring import alerting

    keys = [r.key for r in alerts.day_reasons(DRIFT, PERFORMANCE)]
    assert keys == ["data_drift:2026-03-10", "performance:2026-02-08"]
    rerun = alerts.day_reasons({**DRIFT, "drift_share": 0.41}, {**PERFORMANCE, "roc_auc": 0.6})
    assert [r.key for r in rerun] == keys and [r.text for r in rerun] != alerts.alert_reasons(DRIFT, PERFORMANCE)

    only_new = alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE, already_sent={"data_drift:2026-03-10"})
    assert only_new is not None and only_new["reason_keys"] == ["performance:2026-02-08"]
    assert only_new["reasons"] == alerts.alert_reasons(DRIFT, PERFORMANCE)[1:]
    assert alerts.alert_payload("2026-03-10", DRIFT, PERFORMANCE, already_sent=set(keys)) is None

    doubled = [*rerun, alerts.AlertReason("data_drift:2026-03-10", "again")]
    assert alerting.pending_reasons(doubled, {"performance:2026-02-08"}) == [rerun[0]]
    at = dt.datetime(2026, 3, 11, 1, 2, tzinfo=dt.UTC)
    assert alerting.sent_rows("2026-03-10", keys, ["a", "b"], status=200, run_id="r", sent_at=at) == [
        {"reason_key": k, "reason": t, "sent_at": at, "run_id": "r", "status": 200, "ds": "2026-03-10"}
        for k, t in zip(keys, ["a", "b"], strict=True)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- history rows ---------------------------------------------------------------------------------
def test_rerunning_a_day_replaces_its_drift_history_row(settings, shifted_report) -> None:
    lake = Lake(settings)
    summary = shifted_report.summary()
    ctx = RunContext("drift_report", "scheduled__2026-03-10")

    def write(ds: str, share_threshold: float) -> None:
        row = D.history_row(ds, summary, rows=3000, reference_rows=3000, model_version="3",
                            reference_feature_version=7, report_uri="u", threshold=share_threshold)
        lake.write_partition(DRIFT_HISTORY, ds, pa.Table.from_pylist([row], schema=DRIFT_HISTORY.schema),
                             ctx.lineage(ds, {}))

    write("2026-03-09", 0.3)
    write("2026-03-10", 0.3)
    write("2026-03-10", 0.1)  # re-run with another threshold
    rows = lake.read_table(DRIFT_HISTORY).to_pylist()
    assert sorted((r["ds"], r["alert"]) for r in rows) == [("2026-03-09", False), ("2026-03-10", True)]


# -- reading the lake ---------------------------------------------------------------------------
def _write_features(lake: Lake, ds: str, frame: pd.DataFrame, labels: np.ndarray | None = None) -> int:
    features = UC.tables.features
    out = frame.assign(**{UC.label: pd.array(labels if labels is not None else [None] * len(frame), dtype="Int8")},
                       ds=ds)
    table = pa.Table.from_pandas(out[features.columns], schema=features.schema, preserve_index=False)
    return lake.write_partition(features, ds, table, RunContext().lineage(ds, {}))


def _write_predictions(lake: Lake, ds: str, frame: pd.DataFrame, feature_version: int, model: str = "1") -> int:
    predictions = UC.tables.predictions
    out = pd.DataFrame({UC.key: frame[UC.key], "score": frame[P.PREDICTION], "risk_band": "low",
                        "model_version": model, "feature_table_version": feature_version, "ds": ds})
    return lake.write_partition(predictions, ds, pa.Table.from_pandas(out, schema=predictions.schema,
                                preserve_index=False), RunContext().lineage(ds, {}))


def test_samples_read_the_scored_and_the_pinned_feature_versions(settings) -> None:
    lake = Lake(settings)
    for i, ds in enumerate(["2026-01-10", "2026-01-11", "2026-01-12"]):
        pinned = _write_features(lake, ds, synthetic(400, seed=10 + i))
    scored = synthetic(500, seed=20)
    scored_version = _write_features(lake, "2026-03-01", scored)
    _write_predictions(lake, "2026-03-01", scored, scored_version)
    _write_features(lake, "2026-01-12", synthetic(900, seed=30))  # rewritten after training: not the snapshot
    _write_features(lake, "2026-03-01", synthetic(500, seed=31, spend_factor=9))  # rewritten after scoring

    current = C.current_sample(lake, UC, "2026-03-01", 200, 0)
    assert (current.rows, len(current.frame), current.model_version, current.feature_table_version) == (
        500, 200, "1", scored_version)
    expected = scored.set_index(UC.key).loc[current.frame[UC.key]]
    assert np.allclose(current.frame["spend_30d"], expected["spend_30d"]), "features as they were scored"
    assert np.allclose(current.frame[P.PREDICTION], expected[P.PREDICTION]), "each row with its own score"
    assert C.current_sample(lake, UC, "2026-03-01", 200, 0).frame.equals(current.frame), "seeded"

    spec = R.ReferenceSpec("1", pinned, ("2026-01-10", "2026-01-12"))
    reference = R.reference_sample(lake, UC, spec, 600, 0)
    assert len(reference) == 600 and reference.groupby("ds").size().to_dict() == {
        "2026-01-10": 200, "2026-01-11": 200, "2026-01-12": 200}
    assert reference.loc[reference["ds"] == "2026-01-12", UC.key].max() < 400, "the pinned version"
    assert reference.equals(R.reference_sample(lake, UC, spec, 600, 0))
    with pytest.raises(monitoring.DriftError, match="no partition in the holdout window"):
        R.reference_sample(lake, UC, R.ReferenceSpec("1", pinned, ("2025-01-01", "2025-01-31")), 10, 0)
    with pytest.raises(monitoring.DriftError, match="run batch_score for 2026-03-02"):
        C.current_sample(lake, UC, "2026-03-02", 10, 0)


def test_realised_performance_is_recorded_once_labels_matured(settings) -> None:
    from sluice.tables import PERFORMANCE_HISTORY

    lake = Lake(settings)
    day, scored_day = dt.date(2026, 3, 31), "2026-03-01"
    ctx = RunContext("drift_report", "r")
    first = monitoring.record_performance(settings, day, ctx)
    assert not first["evaluated"] and first["reason"] == "2026-03-01 was not scored"

    frame = synthetic(400, seed=5)
    version = _write_features(lake, scored_day, frame)
    _write_predictions(lake, scored_day, frame, version)
    assert "not matured" in monitoring.record_performance(settings, day, ctx)["reason"]

    churned = (frame[P.PREDICTION] > frame[P.PREDICTION].median()).astype(np.int8).to_numpy()
    _write_features(lake, scored_day, frame, labels=churned)  # the label arrives 30 days later
    good = monitoring.record_performance(settings, day, ctx)
    assert good["evaluated"] and good["roc_auc"] == 1.0 and not good["alert"]
    assert good["pr_auc_lift"] == pytest.approx(1 / churned.mean())
    _write_features(lake, scored_day, frame, labels=1 - churned)
    bad = monitoring.record_performance(settings, day, ctx)
    assert bad["roc_auc"] == 0.0 and bad["alert"]
    rows = lake.read_table(PERFORMANCE_HISTORY).to_pylist()
    assert [(r["ds"], r["evaluated_on"], r["alert"], r["rows"]) for r in rows] == [
        ("2026-03-01", "2026-03-31", True, 400)], "the re-run replaced its row"


# -- the whole day ---------------------------------------------------------------------------------
class _Registry:
    """The registry edge, as drift_report uses it: a version's tags and its booster."""

    tags: dict[str, str] = {}
    booster = None

    def __init__(self, settings) -> None:
        pass

    def version(self, version: str):
        from types import SimpleNamespace

        return SimpleNamespace(version=version, tags=self.tags)

    def load_booster(self, version: str):
        return self.booster


def test_drift_report_of_a_day_with_an_all_null_device(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_drift_report end to end on a lake of its own: the bug reproduced where it hurt, in the task."""
    import lightgbm as lgb

    from sluice.core.train import FittedModel, model_matrix
    from sluice.edges.storage import filesystem
    from sluice.stages.score import model_scores, predictions_table

    lake = Lake(settings)
    holdout_days = ["2026-01-10", "2026-01-11", "2026-01-12"]
    frames = []
    for i, ds in enumerate(holdout_days):
        frame = synthetic(400, seed=40 + i)
        frames.append(frame)
        pinned = _write_features(lake, ds, frame)
    train = pd.concat(frames, ignore_index=True)
    labels = (np.random.default_rng(0).random(len(train)) < train[P.PREDICTION]).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1},
                        lgb.Dataset(model_matrix(train, UC), label=labels), num_boost_round=5)
    ds, day = "2026-03-01", dt.date(2026, 3, 1)
    version = _write_features(lake, ds, synthetic(500, seed=50).assign(device=None))
    features = lake.read_partition(UC.tables.features, ds, version=version)
    scores = model_scores(FittedModel.from_booster(booster, UC), features)
    lake.write_partition(UC.tables.predictions, ds,
                         predictions_table(UC, features.column(UC.key), scores, "1", version, ds),
                         RunContext().lineage(ds, {}))
    _Registry.booster = booster
    _Registry.tags = {"feature_table_version": str(pinned), "training_windows": json.dumps(
        {"holdout": [holdout_days[0], holdout_days[-1]]})}
    monkeypatch.setattr("sluice.edges.registry.Registry", _Registry)
    policy = monitoring.load_policy(drift_reference_rows=600, drift_current_rows=300)

    result = monitoring.build_drift_report(settings, day, RunContext("drift_report", "r1"), policy)
    assert result["skipped_columns"] == {"device": "all null in current"}
    assert result["drifted_columns"][-1] == "device" and result["missing_drifted"] == ["device"]
    assert (result["rows"], result["reference_rows"], result["n_columns"]) == (500, 600, len(FEATURE_COLUMNS))
    html = monitoring.report_uri(settings, ds)
    assert result["report_uri"] == html and html.startswith(f"{settings.lake_root}/{monitoring.REPORTS_PREFIX}/")
    for uri in (html, result["report_json_uri"]):
        fs, path = filesystem(settings, uri)
        assert fs.get_file_info(path).is_file, uri
    fs, path = filesystem(settings, result["report_json_uri"])
    with fs.open_input_stream(path) as f:
        meta = json.loads(f.read())["sluice"]
    assert meta["use_case"] == UC.name and meta["summary"]["skipped_columns"] == {"device": "all null in current"}
    [row] = lake.read_table(DRIFT_HISTORY).to_pylist()
    assert json.loads(row["skipped_columns"]) == {"device": "all null in current"} and row["ds"] == ds
    lineage = lake.lineage(DRIFT_HISTORY)
    assert lineage is not None and lineage.inputs == {UC.tables.features.name: version,
                                                      UC.tables.predictions.name: lake.version(UC.tables.predictions)}

    _Registry.booster = None  # the re-run reads the kept, scored reference: no model needed
    again = monitoring.build_drift_report(settings, day, RunContext("drift_report", "r2"), policy)
    assert {k: again[k] for k in ("drift_share", "drifted_columns", "skipped_columns")} == {
        k: result[k] for k in ("drift_share", "drifted_columns", "skipped_columns")}
    assert len(lake.read_table(DRIFT_HISTORY)) == 1, "the re-run replaced its row"
    decision = monitoring.decide_early_retrain(settings, day, policy)
    assert decision["model_version"] == "1" and not decision["trigger"]
