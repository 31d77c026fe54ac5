"""Shadow evidence: is the challenger better than the champion on live days?

Pure. Each matured day gives one paired comparison of the two models on the same entities
(``paired_day``); :func:`shadow_evidence` asks whether the challenger's advantage over those
days is more than noise: a paired t-interval over the daily differences of the metric, which
must exclude zero. Days are the unit, not rows: rows of one day share that day's conditions,
so counting them as independent would make any small advantage look certain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Metric = Literal["roc_auc", "pr_auc", "log_loss"]
# For log loss lower is better: the advantage of the challenger is the champion's minus its own.
LOWER_IS_BETTER = {"log_loss"}


def paired_day(y: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> dict[str, Any]:
    """The metrics of both models on one day's labelled entities (the same rows for both)."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

    y = np.asarray(y).astype(int)
    row: dict[str, Any] = {"rows": int(len(y)), "positive_rate": float(y.mean()) if len(y) else math.nan}
    for role, p in (("champion", champion), ("challenger", challenger)):
        p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
        two_classes = len(np.unique(y)) == 2
        row[f"{role}_roc_auc"] = float(roc_auc_score(y, p)) if two_classes else math.nan
        row[f"{role}_pr_auc"] = float(average_precision_score(y, p)) if two_classes else math.nan
        row[f"{role}_log_loss"] = float(log_loss(y, p, labels=[0, 1])) if len(y) else math.nan
    return row


@dataclass(frozen=True)
class ShadowEvidence:
    challenger_version: str
    metric: str
    days: int  # matured days on which both scored the same entities
    required_days: int
    wins: int  # days the challenger was better
    mean_advantage: float  # challenger minus champion (champion minus challenger for log loss)
    low: float  # the paired t-interval of the mean advantage
    high: float
    confidence: float
    verdict: Literal["better", "worse", "no difference", "too few days"]
    first_day: str | None
    last_day: str | None

    @property
    def passes(self) -> bool:
        return self.verdict == "better"

    def to_dict(self) -> dict[str, Any]:
        """As JSON takes it: a number that is not finite (no days yet) is None."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        if self.verdict == "too few days":
            return (f"shadow: {self.days} of {self.required_days} matured live days of v{self.challenger_version} "
                    "so far")
        return (f"shadow: v{self.challenger_version} {self.verdict} than the champion on {self.days} live days "
                f"({self.wins} won): {self.metric} {self.mean_advantage:+.4f}, "
                f"{self.confidence:.0%} interval [{self.low:+.4f}, {self.high:+.4f}]")


def shadow_evidence(
    rows: Sequence[Mapping[str, Any]],
    challenger_version: str,
    *,
    min_days: int = 14,
    metric: Metric = "roc_auc",
    confidence: float = 0.95,
) -> ShadowEvidence:
    """The evidence of ``monitoring/shadow_performance`` rows for ``challenger_version``.

    ``better`` needs at least ``min_days`` days and an interval wholly above zero; ``worse``
    an interval wholly below it; otherwise ``no difference``.
    """
    from scipy import stats

    mine = sorted((r for r in rows if r["challenger_version"] == challenger_version
                   and math.isfinite(r[f"champion_{metric}"]) and math.isfinite(r[f"challenger_{metric}"])),
                  key=lambda r: r["ds"])
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    diffs = np.array([sign * (r[f"challenger_{metric}"] - r[f"champion_{metric}"]) for r in mine])
    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    if n >= 2:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * diffs.std(ddof=1) / math.sqrt(n))
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    if n < max(min_days, 2):
        verdict = "too few days"
    elif low > 0:
        verdict = "better"
    elif high < 0:
        verdict = "worse"
    else:
        verdict = "no difference"
    return ShadowEvidence(
        challenger_version=challenger_version, metric=metric, days=n, required_days=min_days,
        wins=int((diffs > 0).sum()), mean_advantage=mean, low=low, high=high, confidence=confidence,
        verdict=verdict,  # type: ignore[arg-type]
        first_day=mine[0]["ds"] if mine else None, last_day=mine[-1]["ds"] if mine else None,
    )


def evidence_under(spec: Any, rows: Sequence[Mapping[str, Any]], challenger_version: str) -> ShadowEvidence:
    """:func:`shadow_evidence` with the thresholds of a use case's ``gate.shadow`` spec."""
    return shadow_evidence(rows, challenger_version, min_days=spec.min_days, metric=spec.metric,
                           confidence=spec.confidence)


CARD_SECTION = "## Shadow results"


def card_section(evidence: ShadowEvidence | None, rows: Sequence[Mapping[str, Any]]) -> str:
    """The model card's shadow section: the evidence and every paired live day of the version."""
    if evidence is None:
        return f"{CARD_SECTION}\nNever scored in shadow (it was champion from its decision, or is not yet).\n"
    mine = sorted((r for r in rows if r["challenger_version"] == evidence.challenger_version), key=lambda r: r["ds"])
    lines = [CARD_SECTION, f"{evidence.describe()}.", ""]
    if mine:
        lines += ["| scored day | champion | rows | ROC-AUC champion | ROC-AUC this model | log loss champion | "
                  "log loss this model |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['ds']} | v{r['champion_version']} | {r['rows']:,} | {r['champion_roc_auc']:.4f} | "
                  f"{r['challenger_roc_auc']:.4f} | {r['champion_log_loss']:.4f} | {r['challenger_log_loss']:.4f} |"
                  for r in mine]
    return "\n".join(lines) + "\n"


def with_card_section(card: str, section: str) -> str:
    """``card`` with its section of ``section``'s heading (its first line) replaced by ``section``,
    appended when it has none; the other sections stay where they are."""
    heading = section.split("\n", 1)[0].strip()
    parts = card.rstrip("\n").split("\n## ")
    head, rest = parts[0], [f"## {p}" for p in parts[1:]]
    body = section.rstrip("\n")
    replaced = [body if p.split("\n", 1)[0].strip() == heading else p for p in rest]
    if body not in replaced:
        replaced.append(body)
    return "\n\n".join([head.rstrip("\n"), *(p.rstrip("\n") for p in replaced)]) + "\n"
