"""Champion/challenger gate: a pure function of two models' scores on one holdout and a policy.

No MLflow, no Airflow, no I/O: the caller scores both models on the same, most
recent matured holdout and passes the arrays in. The challenger is promoted only if

1. it clears the floors (ROC-AUC, PR-AUC, or PR-AUC lift: PR-AUC over the base rate,
   fairer than an absolute PR-AUC when the positive rate is high or low);
2. it beats the champion on the primary metric by at least a margin, and the
   paired-bootstrap confidence interval of the difference excludes zero;
3. no guarded slice (a category feature the use case names) with enough rows regresses
   beyond a tolerance;
4. its calibration (expected calibration error) is not worse beyond a tolerance.

With no champion, the floors alone decide. The decision records every check with
its numbers and reason, ready to be stored as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class GatePolicy:
    primary_metric: str = "roc_auc"
    floors: Mapping[str, float] = field(default_factory=lambda: {"roc_auc": 0.70, "pr_auc": 0.15})
    min_improvement: float = 0.002
    confidence: float = 0.95
    n_bootstrap: int = 400
    guarded_slices: tuple[str, ...] = ()
    slice_min_rows: int = 300
    slice_tolerance: float = 0.02
    calibration_tolerance: float = 0.02
    seed: int = 0


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    challenger: str
    champion: str | None
    checks: tuple[Check, ...]
    policy: GatePolicy
    forced: bool = False
    forced_reason: str | None = None

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed] or [c.reason for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["policy"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(self.policy).items()}
        out["reasons"] = self.reasons
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


# -- metrics ----------------------------------------------------------------------------
def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / len(y))


def metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "pr_auc": float("nan"), "pr_auc_lift": float("nan"), "ece": float("nan"),
                "brier": float("nan"), "rows": len(y)}
    pr_auc = float(average_precision_score(y, p))
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": pr_auc,
        "pr_auc_lift": pr_auc / float(y.mean()),
        "ece": expected_calibration_error(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "positive_rate": float(y.mean()),
        "rows": int(len(y)),
    }


def _metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
    if name == "roc_auc":
        return float(roc_auc_score(y, p))
    if name == "pr_auc":
        return float(average_precision_score(y, p))
    raise ValueError(f"unknown primary metric {name!r}")


def paired_bootstrap(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, metric: str, n: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """Difference challenger - champion of ``metric``, and its bootstrap confidence interval.

    Both models are scored on the same resampled rows each time (paired), which is
    what makes a small but consistent improvement visible.
    """
    rng = np.random.default_rng(seed)
    diff = _metric(metric, y, challenger) - _metric(metric, y, champion)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        diffs.append(_metric(metric, yb, challenger[idx]) - _metric(metric, yb, champion[idx]))
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return diff, float(lo), float(hi)


# -- reasons ----------------------------------------------------------------------------
def decimals_apart(*pairs: tuple[float, float], least: int = 4, most: int = 30) -> int:
    """The fewest decimals, at least ``least``, at which no two different numbers of a pair look equal.

    A gap of 0.00196 against a margin of 0.002 prints as +0.0020 and +0.0020 with four
    decimals, and a reason that says "improves by +0.0020, needs >= +0.0020" reads as a
    pass. Numbers that are equal may print equal; -0.0000 and +0.0000 count as equal.
    """
    for places in range(least, most):
        if all(a == b or float(f"{a:.{places}f}") != float(f"{b:.{places}f}") for a, b in pairs):
            return places
    return most


def improvement_reason(metric: str, diff: float, lo: float, hi: float, margin: float, ok: bool) -> str:
    """The improvement check in words, with enough decimals for both of its comparisons to show."""
    places = decimals_apart((diff, margin), (lo, 0.0))

    def num(x: float) -> str:
        return f"{x:+.{places}f}"

    verdict = (
        "above the margin with an interval that excludes zero"
        if ok
        else f"needs >= {num(margin)} with the interval above zero"
    )
    return f"{metric} improves by {num(diff)} (CI {num(lo)} .. {num(hi)}), {verdict}"


# -- the gate ---------------------------------------------------------------------------
def decide(
    y: np.ndarray,
    challenger_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    slices: Mapping[str, np.ndarray],
    policy: GatePolicy = GatePolicy(),
    *,
    challenger: str = "challenger",
    champion: str | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion. Pure: same inputs, same decision."""
    y = np.asarray(y).astype(int)
    chal = np.asarray(challenger_scores, dtype=float)
    checks: list[Check] = []

    chal_metrics = metrics(y, chal)
    below = {m: (chal_metrics[m], floor) for m, floor in policy.floors.items() if not chal_metrics[m] >= floor}
    checks.append(
        Check(
            "floors",
            not below,
            "clears every floor"
            if not below
            else "below the floor: " + ", ".join(f"{m} {v:.4f} < {f:.4f}" for m, (v, f) in below.items()),
            {"challenger": chal_metrics, "floors": dict(policy.floors)},
        )
    )

    if champion_scores is not None:
        champ = np.asarray(champion_scores, dtype=float)
        champ_metrics = metrics(y, champ)
        m = policy.primary_metric
        diff, lo, hi = paired_bootstrap(y, chal, champ, m, policy.n_bootstrap, policy.confidence, policy.seed)
        ok = diff >= policy.min_improvement and lo > 0
        checks.append(
            Check(
                "improvement",
                ok,
                improvement_reason(m, diff, lo, hi, policy.min_improvement, ok),
                {"metric": m, "difference": diff, "ci_low": lo, "ci_high": hi, "margin": policy.min_improvement,
                 "challenger": chal_metrics[m], "champion": champ_metrics[m], "confidence": policy.confidence},
            )
        )

        regressions, examined = [], []
        for column in policy.guarded_slices:
            values = np.asarray(slices[column])
            for value in sorted(set(values.tolist()), key=str):
                mask = values == value
                if mask.sum() < policy.slice_min_rows or len(np.unique(y[mask])) < 2:
                    continue
                a, b = _metric(m, y[mask], chal[mask]), _metric(m, y[mask], champ[mask])
                examined.append({"slice": f"{column}={value}", "rows": int(mask.sum()), "challenger": a, "champion": b})
                if a - b < -policy.slice_tolerance:
                    regressions.append(f"{column}={value} {m} {b:.4f} -> {a:.4f}")
        checks.append(
            Check(
                "slices",
                not regressions,
                f"no guarded slice regresses by more than {policy.slice_tolerance}"
                if not regressions
                else "guarded slice(s) regress: " + "; ".join(regressions),
                {"examined": examined, "tolerance": policy.slice_tolerance, "min_rows": policy.slice_min_rows},
            )
        )

        worse = chal_metrics["ece"] - champ_metrics["ece"]
        ok = worse <= policy.calibration_tolerance
        checks.append(
            Check(
                "calibration",
                ok,
                f"expected calibration error {champ_metrics['ece']:.4f} -> {chal_metrics['ece']:.4f}"
                + ("" if ok else f", worse by more than {policy.calibration_tolerance}"),
                {"challenger_ece": chal_metrics["ece"], "champion_ece": champ_metrics["ece"],
                 "tolerance": policy.calibration_tolerance},
            )
        )
    return Decision(
        promote=all(c.passed for c in checks),
        challenger=challenger,
        champion=champion,
        checks=tuple(checks),
        policy=policy,
    )


def forced(decision: Decision, reason: str) -> Decision:
    """The same decision, overridden to promote by a person, with their reason recorded."""
    if not reason or not reason.strip():
        raise ValueError("force_promote needs a reason")
    return Decision(
        promote=True,
        challenger=decision.challenger,
        champion=decision.champion,
        checks=decision.checks,
        policy=decision.policy,
        forced=True,
        forced_reason=reason.strip(),
    )
