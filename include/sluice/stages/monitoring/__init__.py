"""Monitoring of a use case's champion, one day at a time (the drift_report DAG).

* **Reference** (:mod:`.reference`): a fixed-size, seeded sample of the champion's
  holdout days (the feature version and holdout window its registry tags record),
  scored by the champion; computed once per model and kept next to the reports.
* **Current** (:mod:`.current`): the features of D that were scored, with their scores,
  sampled to a fixed size (:mod:`.sampling`).
* **Report** (:mod:`.report`, the Evidently adapter): data drift of every feature,
  prediction drift of ``score``, missing values; columns that cannot be compared (all
  null, or one constant value) are reported as skipped, not compared.
  :mod:`.drift` writes it as HTML and JSON under ``<lake root>/reports/drift/ds=D/`` and
  one summary row in ``monitoring/drift_history`` D.
* **Performance** (:mod:`.performance`): once the labels of D - horizon mature, their
  realised ROC-AUC / PR-AUC go to ``monitoring/performance_history``.
* **Early retraining** (:mod:`.early_retrain`): decided from the drift history; a
  trigger is remembered in ``monitoring/early_retrains`` for the cooldown.
* **Volume** (:mod:`.volume`, ingest_raw's ``check_volume``): the raw rows of D against
  the median of the trailing days (``contract.volume``), in ``monitoring/volume_history``;
  outside the band an alert, and a failed task if the use case says so.
* **Alerts** (:mod:`.alerting`): the day's reasons sent through the alert channels, each at most once
  per day (``monitoring/alerts_sent``), whatever re-runs.

The thresholds are a :class:`DriftPolicy` (``SLUICE_*`` variables). Evidently is
imported only to run a report.
"""

from sluice.edges.storage import REPORTS_PREFIX, report_uri, reports_root
from sluice.stages.monitoring.alerting import AlertOutcome, send_day_alert
from sluice.stages.monitoring.drift import build_drift_report
from sluice.stages.monitoring.early_retrain import decide_early_retrain, record_early_retrain
from sluice.stages.monitoring.performance import record_performance
from sluice.stages.monitoring.policy import DriftError, DriftPolicy, load_policy
from sluice.stages.monitoring.volume import check_day_volume

__all__ = [
    "REPORTS_PREFIX",
    "AlertOutcome",
    "DriftError",
    "DriftPolicy",
    "build_drift_report",
    "check_day_volume",
    "decide_early_retrain",
    "load_policy",
    "record_early_retrain",
    "record_performance",
    "report_uri",
    "reports_root",
    "send_day_alert",
]
