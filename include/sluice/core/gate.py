"""Champion/challenger gate: a pure function of two models' scores on one holdout and a policy.

No MLflow, no Airflow, no I/O: the caller scores both models on the same, most
recent matured holdout and passes the arrays in. The challenger is promoted only if

1. it clears the floors (ROC-AUC, PR-AUC, or PR-AUC lift: PR-AUC over the base rate,
   fairer than an absolute PR-AUC when the positive rate is high or low);
2. it beats the champion on the primary metric by at least a margin, and the
   paired-bootstrap confidence interval of the difference excludes zero (resampling
   entities, not rows, when the caller says which row is whose);
3. no slice (a value of a category feature, every one unless the use case names some) with
   enough rows of both classes regresses beyond a tolerance with an interval below zero; the
   record lists every slice examined and every one skipped, with why;
4. its calibration (expected calibration error) is not worse beyond a tolerance, nor above a
   share of the base rate.

With no champion, the floors alone decide. The decision records every check with
its numbers and reason, ready to be stored as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class GatePolicy:
    primary_metric: str = "roc_auc"
    floors: Mapping[str, float] = field(default_factory=lambda: {"roc_auc": 0.70, "pr_auc_lift": 1.5})
    min_improvement: float = 0.002
    confidence: float = 0.95
    n_bootstrap: int = 400
    guarded_slices: tuple[str, ...] = ()
    slice_min_rows: int = 300
    slice_min_per_class: int = 10
    slice_tolerance: float = 0.02
    calibration_tolerance: float = 0.02
    calibration_max_ece_ratio: float = 0.5
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
                "brier": float("nan"), "positive_rate": float(y.mean()) if len(y) else float("nan"), "rows": len(y)}
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


def _metric(name: str, y: np.ndarray, p: np.ndarray, weight: np.ndarray | None = None) -> float:
    if name == "roc_auc":
        return float(roc_auc_score(y, p, sample_weight=weight))
    if name == "pr_auc":
        return float(average_precision_score(y, p, sample_weight=weight))
    raise ValueError(f"unknown primary metric {name!r}")


def weighted_roc_auc(y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """ROC-AUC of fixed scores ``p`` and labels ``y`` as a function of row weights.

    The same number as ``roc_auc_score(y, p, sample_weight=w)`` (ties count half), in O(n)
    per weight vector: the rows are sorted by score once, and each resample only sums its
    weights per distinct score. A bootstrap of a few hundred resamples of a holdout of a
    hundred thousand rows then takes a second, not a minute.
    """
    order = np.argsort(p, kind="mergesort")
    ps, ys = p[order], np.asarray(y)[order].astype(float)
    distinct = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1 if len(ps) else np.array([], dtype=int)

    def auc(weight: np.ndarray) -> float:
        w = weight[order]
        pos = np.bincount(distinct, weights=w * ys)
        neg = np.bincount(distinct, weights=w * (1 - ys))
        below = np.cumsum(neg) - neg
        denominator = pos.sum() * neg.sum()
        return float((pos * (below + 0.5 * neg)).sum() / denominator) if denominator else float("nan")

    return auc


def paired_bootstrap(
    y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, metric: str, n: int, confidence: float, seed: int,
    groups: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Difference challenger - champion of ``metric``, and its bootstrap confidence interval.

    Both models are scored on the same resampled rows each time (paired), which is
    what makes a small but consistent improvement visible. With ``groups`` (the entity of
    each row) whole entities are resampled (a cluster bootstrap): a holdout of several days
    holds each customer several times, and those rows are not independent; resampling rows
    would make the interval too narrow. A resample counts an entity as often as it was
    drawn (a weight), so no rows are copied.
    """
    rng = np.random.default_rng(seed)
    diff = _metric(metric, y, challenger) - _metric(metric, y, champion)
    codes = np.unique(groups, return_inverse=True)[1] if groups is not None else np.arange(len(y))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    if metric == "roc_auc":
        chal_auc, champ_auc = weighted_roc_auc(y, challenger), weighted_roc_auc(y, champion)
    diffs = []
    for _ in range(n):
        weight = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[codes].astype(float)
        drawn = weight > 0
        yb = y[drawn]
        if yb.min() == yb.max():
            continue
        if metric == "roc_auc":
            diffs.append(chal_auc(weight) - champ_auc(weight))
            continue
        w = weight[drawn]
        diffs.append(_metric(metric, yb, challenger[drawn], w) - _metric(metric, yb, champion[drawn], w))
    if not diffs:
        return diff, float("nan"), float("nan")
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


# -- slices -------------------------------------------------------------------------------
def _slices_check(
    y: np.ndarray, chal: np.ndarray, champ: np.ndarray, slices: Mapping[str, np.ndarray], policy: GatePolicy,
    groups: np.ndarray | None,
) -> Check:
    """Every value of every guarded category feature: examined when it has enough rows of both
    classes, else skipped with the reason. A slice regresses when the challenger is worse there
    by more than the tolerance *and* the paired interval of the difference lies below zero: a
    slice of a few hundred rows is noisy, and a genuine regression (a model that knows nothing
    about one channel) is far outside that noise.
    """
    m = policy.primary_metric
    examined: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    regressions: list[str] = []
    for column in policy.guarded_slices:
        if column not in slices:
            skipped.append({"slice": column, "reason": "no values of this feature in the holdout"})
            continue
        values = np.asarray(slices[column]).astype(str)
        for value in sorted(set(values.tolist())):
            mask = values == value
            name, rows, positives = f"{column}={value}", int(mask.sum()), int(y[mask].sum())
            if rows < policy.slice_min_rows:
                skipped.append({"slice": name, "rows": rows, "reason": f"{rows} rows < {policy.slice_min_rows}"})
                continue
            if min(positives, rows - positives) < policy.slice_min_per_class:
                skipped.append({"slice": name, "rows": rows, "positives": positives,
                                "reason": f"{positives} positives of {rows}: fewer than {policy.slice_min_per_class} "
                                          "of a class"})
                continue
            a, b = _metric(m, y[mask], chal[mask]), _metric(m, y[mask], champ[mask])
            lo: float | None = None
            hi: float | None = None
            regressed = False
            if a - b < -policy.slice_tolerance:
                _, lo, hi = paired_bootstrap(
                    y[mask], chal[mask], champ[mask], m, policy.n_bootstrap, policy.confidence, policy.seed,
                    None if groups is None else groups[mask],
                )
                regressed = bool(hi is not None and hi < 0)
            examined.append({"slice": name, "rows": rows, "positives": positives, "challenger": a, "champion": b,
                             "difference": a - b, "ci_low": lo, "ci_high": hi, "regressed": regressed})
            if regressed:
                regressions.append(f"{name} {m} {b:.4f} -> {a:.4f} (CI {lo:+.4f} .. {hi:+.4f})")
    guarded = ", ".join(policy.guarded_slices) or "none"
    return Check(
        "slices",
        not regressions,
        (f"no slice of {guarded} regresses by more than {policy.slice_tolerance} ({len(examined)} examined, "
         f"{len(skipped)} skipped)")
        if not regressions
        else "slice(s) regress: " + "; ".join(regressions),
        {"examined": examined, "skipped": skipped, "guarded": list(policy.guarded_slices),
         "tolerance": policy.slice_tolerance, "min_rows": policy.slice_min_rows,
         "min_per_class": policy.slice_min_per_class},
    )


def _calibration_check(chal: Mapping[str, float], champ: Mapping[str, float], policy: GatePolicy) -> Check:
    """Not worse calibrated than the champion beyond a tolerance, and not badly calibrated at all.

    The second half matters when the champion is itself poorly calibrated: a challenger that
    ranks better but whose probabilities are far off (an expected calibration error of half the
    base rate) would otherwise pass for being only a little worse than it.
    """
    worse = chal["ece"] - champ["ece"]
    ceiling = policy.calibration_max_ece_ratio * chal["positive_rate"]
    relative_ok = worse <= policy.calibration_tolerance
    absolute_ok = chal["ece"] <= ceiling
    reason = f"expected calibration error {champ['ece']:.4f} -> {chal['ece']:.4f}"
    if not relative_ok:
        reason += f", worse by more than {policy.calibration_tolerance}"
    if not absolute_ok:
        reason += (f", above {policy.calibration_max_ece_ratio:g} x the base rate "
                   f"({chal['positive_rate']:.4f}): {ceiling:.4f}")
    return Check(
        "calibration", relative_ok and absolute_ok, reason,
        {"challenger_ece": chal["ece"], "champion_ece": champ["ece"], "tolerance": policy.calibration_tolerance,
         "ceiling": ceiling, "max_ece_ratio": policy.calibration_max_ece_ratio},
    )


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
    groups: np.ndarray | None = None,
) -> Decision:
    """Decide whether the challenger replaces the champion. Pure: same inputs, same decision.

    ``slices`` holds the values of every category feature per holdout row (the guarded ones
    are judged); ``groups`` the entity of each row, so that the intervals resample entities.
    """
    y = np.asarray(y).astype(int)
    groups = None if groups is None else np.asarray(groups)
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
        diff, lo, hi = paired_bootstrap(y, chal, champ, m, policy.n_bootstrap, policy.confidence, policy.seed, groups)
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

        checks.append(_slices_check(y, chal, champ, slices, policy, groups))

        checks.append(_calibration_check(chal_metrics, champ_metrics, policy))
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
