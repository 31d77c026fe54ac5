"""weekly_retrain for day D: train a challenger on a pinned feature version, gate it, promote or not.

I/O at the edges: the lake (features, decisions, promotions), MLflow (runs,
registry). Training (``sluice.core.train``) and the decision (``sluice.core.gate``) are pure.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from sluice.core import train as T
from sluice.core import usecase
from sluice.core.approval import ANSWERS, AWAITING
from sluice.core.gate import Decision, GatePolicy, decide, forced, metrics
from sluice.core.lineage import RunContext, detected_code_version
from sluice.core.shadow import ShadowEvidence, evidence_under
from sluice.core.usecase import UseCase
from sluice.edges.lake import Lake
from sluice.edges.registry import CHALLENGER, CHAMPION, Registry
from sluice.settings import Settings
from sluice.stages.promotions import challenger_on, effective_day, record_promotion, shadow_days, verdict
from sluice.stages.promotions import history as promotion_history
from sluice.tables import MODEL_DECISIONS, PARTITION_COLUMN

# A decision row is recorded once per model, run and approval state (asked, then answered).
DECISION_KEY = ("model_version", "run_id", "approval_state")

log = logging.getLogger(__name__)


def warmup_days(settings: Settings, uc: UseCase) -> int:
    """The lake's first days never trained on: the spec's, unless SLUICE_TRAIN_WARMUP_DAYS overrides it."""
    return uc.warmup_days if settings.train_warmup_days is None else settings.train_warmup_days


def split_plan(settings: Settings, uc: UseCase) -> T.SplitPlan:
    """The use case's time split; SLUICE_TRAIN_MAX_DAYS may shorten its train window."""
    return T.SplitPlan.of(uc, settings.train_max_days)


def gate_policy(uc: UseCase) -> GatePolicy:
    """The use case's gate, as the pure gate takes it."""
    g = uc.spec.gate
    return GatePolicy(
        primary_metric=g.primary_metric, floors={str(k): v for k, v in g.floors.items()}, min_improvement=g.min_improvement,
        confidence=g.confidence, n_bootstrap=g.n_bootstrap, guarded_slices=uc.guarded_slices,
        slice_min_rows=g.slice_min_rows, slice_min_per_class=g.slice_min_per_class, slice_tolerance=g.slice_tolerance,
        calibration_tolerance=g.calibration_tolerance, calibration_max_ece_ratio=g.calibration_max_ece_ratio,
    )


def load_training_frame(lake: Lake, as_of: dt.date, settings: Settings) -> tuple[pd.DataFrame, int]:
    """Matured, warmed-up snapshots known by ``as_of``, from one pinned version of the feature table."""
    uc = usecase.of(settings)
    FEATURES = uc.tables.features
    version = lake.version(FEATURES)
    if version is None:
        raise T.NotEnoughData(f"{FEATURES.name} does not exist yet: run nightly_etl first")
    warmup = warmup_days(settings, uc)
    days = T.training_days(
        lake.partitions(FEATURES, version=version), as_of, horizon=uc.horizon, warmup_days=warmup,
        max_days=split_plan(settings, uc).max_span,
    )
    if not days:
        raise T.NotEnoughData(
            f"no snapshot with a matured label by {as_of} (labels mature {uc.horizon} days after a "
            f"snapshot) outside the lake's first {warmup} days (training.warmup_days of {uc.name})"
        )
    frame = lake.read_partitions(FEATURES, days, version=version).to_pandas()
    # A Delta scan returns files in commit order, which depends on which backfill run
    # finished first; LightGBM's bagging depends on row order. Sorted, the same data
    # gives the same model however the partitions were written.
    frame = frame.sort_values([PARTITION_COLUMN, uc.key], kind="stable", ignore_index=True)
    return T.matured(frame, uc, as_of), version


def slice_metrics(frame: pd.DataFrame, scores: np.ndarray, uc: UseCase) -> dict[str, dict]:
    out = {}
    y = frame[uc.label].astype(int).to_numpy()
    columns = uc.guarded_slices
    for col in columns:
        for value in sorted(frame[col].dropna().unique()):
            mask = (frame[col] == value).to_numpy()
            out[f"{col}={value}"] = metrics(y[mask], scores[mask])
    return out


def _plots(y: np.ndarray, p: np.ndarray, importance: pd.Series) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    figs = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (holdout)")
    figs["roc_curve.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(y, p)
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    figs["precision_recall_curve.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    ax.plot(mean, frac, "o-")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="mean predicted", ylabel="observed positive rate", title="Calibration (holdout)")
    figs["calibration.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 6))
    importance.head(20)[::-1].plot.barh(ax=ax)
    ax.set(title="Feature importance (gain)")
    fig.tight_layout()
    figs["feature_importance.png"] = fig
    return figs


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Pure: mean score and observed rate per score decile (the calibration table of the card)."""
    if len(y) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        out.append({"rows": int(len(part)), "mean_score": float(p[part].mean()), "observed": float(y[part].mean())})
    return out


def model_card(
    version: str | None, settings: Settings, feature_version: int, split: T.Split, holdout: dict, slices: dict,
    decision: Decision, uc: UseCase, calibration: list[dict[str, float]] | None = None,
) -> str:
    rows = "\n".join(
        f"| {name} | {m['rows']:,} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} |" for name, m in slices.items()
    )
    skipped: list[dict[str, Any]] = next(
        (c.numbers.get("skipped", []) for c in decision.checks if c.name == "slices"), []
    )
    skipped_lines = "\n".join(f"- {s['slice']}: {s['reason']}" for s in skipped) or "- none"
    calibration_rows = "\n".join(
        f"| {i + 1} | {b['rows']:,} | {b['mean_score']:.4f} | {b['observed']:.4f} |"
        for i, b in enumerate(calibration or [])
    )
    plan = split_plan(settings, uc)
    windows = split.windows()
    label = uc.spec.label
    limitations = "\n".join(f"- {line}" for line in uc.spec.limitations) or "- none recorded in the use case"
    return f"""# Model card: {settings.model} v{version or '(new)'} ({uc.name})

## Training data
- Table: `{settings.lake_root}/{uc.tables.features.name}`, Delta version **{feature_version}** (pinned)
- Train snapshots {windows['train'][0]} .. {windows['train'][1]} ({len(split.train):,} rows);
  validation {windows['validation'][0]} .. {windows['validation'][1]} ({len(split.validation):,});
  holdout {windows['holdout'][0]} .. {windows['holdout'][1]} ({len(split.holdout):,}). Split by time, not at random,
  purged: each part at least {plan.purge_days} days (the label horizon) after the one before it, so that no
  training label window reaches a validation or holdout day.
- Label: `{label.name}`, {label.description or label.when.replace("_", " ")} ({label.horizon_days}-day horizon).
- Code version: {detected_code_version()}

## Metrics on the holdout
ROC-AUC {holdout['roc_auc']:.4f}, PR-AUC {holdout['pr_auc']:.4f}, expected calibration error {holdout['ece']:.4f},
Brier {holdout['brier']:.4f}, positive rate {holdout.get('positive_rate', float('nan')):.3f}.

| slice | rows | ROC-AUC | PR-AUC |
|---|---|---|---|
{rows}

Slices the gate skipped (too few rows or of one class):
{skipped_lines}

## Calibration on the holdout
Mean score against the observed rate, per score decile (a calibrated model has them close).

| decile | rows | mean score | observed rate |
|---|---|---|---|
{calibration_rows}

## Gate decision
{_card_verdict(decision, uc)}{" (forced: " + str(decision.forced_reason) + ")" if decision.forced else ""}.
{chr(10).join("- " + c.name + ": " + ("pass" if c.passed else "FAIL") + " - " + c.reason for c in decision.checks)}

## Intended use
{uc.spec.intended_use.strip() or "(the use case states none)"}

## Known limits
{limitations}
"""


def _card_verdict(decision: Decision, uc: UseCase) -> str:
    """What the card says the gate did: with an approval required, a pass only asks a person."""
    if not decision.promote:
        return "**Not promoted**"
    if uc.spec.gate.approval.required:
        return "**Passed the gate**: promoted only once a person approves (see Approval)"
    return "**Promoted**"


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("lightgbm", "numpy", "pandas", "scikit-learn", "mlflow")]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A registered challenger with its gate decision: what the finishing steps need."""

    version: str
    mlflow_run_id: str
    feature_table_version: int
    training_data: str
    decision: dict[str, Any]
    holdout_roc_auc: float
    resumed: bool = False


def earlier_attempt(registry: Registry, ds: str, training_data: str) -> Candidate | None:
    """The challenger already trained on exactly this data as of ``ds``, by any run, if any.

    A retry must not train and gate again: the first try may have promoted its model
    before it crashed, and the retry would then gate a copy against it, say "no
    improvement" and leave the promotion unrecorded (the days after would have no
    champion). A re-trigger or a re-run after an ETL backfill that left the training rows
    as they were is the same retraining too. The key is the training data's content
    (:func:`sluice.core.train.fingerprint`), not the run id or the Delta version, so
    none of them registers another version.
    """
    def quoted(value: object) -> str:
        return "'" + str(value).replace("'", "\\'") + "'"

    runs = registry.client.search_runs(
        [registry.experiment_id()],
        filter_string=f"tags.training_data = {quoted(training_data)} and tags.ds = {quoted(ds)}",
        order_by=["attribute.start_time ASC"],
    )
    for run in runs:
        versions = [
            v for v in registry.client.search_model_versions(f"run_id={quoted(run.info.run_id)}")
            if v.name == registry.name
        ]
        if not versions:
            continue  # crashed before its model was registered: nothing to resume
        import mlflow

        decision = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/gate/decision.json")
        version = str(min(int(v.version) for v in versions))
        log.info("v%s was trained on this data as of %s by %s (MLflow run %s): resuming it",
                 version, ds, run.data.tags.get("run_id"), run.info.run_id)
        return Candidate(
            version=version,
            mlflow_run_id=run.info.run_id,
            feature_table_version=int(run.data.tags.get("feature_table_version", -1)),
            training_data=training_data,
            decision=decision | {"challenger": version},
            holdout_roc_auc=float(run.data.metrics.get("holdout_roc_auc", float("nan"))),
            resumed=True,
        )
    return None


def retrain(
    settings: Settings,
    day: dt.date,
    ctx: RunContext,
    *,
    dry_run: bool = False,
    force_promote: bool = False,
    reason: str | None = None,
    policy: GatePolicy | None = None,
) -> dict[str, Any]:
    """Train, gate and (unless ``dry_run``) promote the challenger of ``day``; a retry resumes."""
    if force_promote and not (reason and reason.strip()):
        raise ValueError("force_promote needs a reason")
    lake = Lake(settings)
    ds = day.isoformat()
    frame, feature_version = load_training_frame(lake, day, settings)
    training_data = T.fingerprint(frame, usecase.of(settings), day)
    registry = Registry(settings)
    candidate = earlier_attempt(registry, ds, training_data)
    if candidate is not None:
        candidate = _as_requested(candidate, registry, reason if force_promote else None)
    if candidate is None:
        candidate = _train_and_register(
            settings, registry, frame, feature_version, training_data, ds, ctx,
            force_reason=reason if force_promote else None, policy=policy or gate_policy(usecase.of(settings)),
        )
    return _finish(settings, lake, registry, ds, candidate, ctx, dry_run=dry_run)


def _as_requested(candidate: Candidate, registry: Registry, force_reason: str | None) -> Candidate:
    """The resumed challenger's gate verdict under this request: the gate's own, or forced by this run."""
    decision = dict(candidate.decision)
    decision |= {"promote": all(c["passed"] for c in decision.get("checks") or []), "forced": False,
                 "forced_reason": None}
    if force_reason is not None:
        champion = registry.by_alias(CHAMPION)
        decision |= {"promote": True, "forced": True, "forced_reason": force_reason.strip(),
                     "champion": champion.version if champion else None}
    return dataclasses.replace(candidate, decision=decision)


def _train_and_register(
    settings: Settings,
    registry: Registry,
    frame: pd.DataFrame,
    feature_version: int,
    training_data: str,
    ds: str,
    ctx: RunContext,
    *,
    force_reason: str | None,
    policy: GatePolicy,
) -> Candidate:
    uc = usecase.of(settings)
    split = T.time_split(frame, split_plan(settings, uc))
    model = T.fit(split, uc)
    holdout = split.holdout.reset_index(drop=True)
    y = holdout[uc.label].astype(int).to_numpy()
    chal_scores = model.predict(holdout)

    champion = registry.by_alias(CHAMPION)
    champ_scores = None
    if champion is not None:
        champ_scores = T.FittedModel.from_booster(registry.load_booster(champion.version), uc).predict(holdout)
    decision = decide(
        y, chal_scores, champ_scores, {c: holdout[c].astype(str).to_numpy() for c in policy.guarded_slices}, policy,
        champion=champion.version if champion else None, groups=holdout[uc.key].to_numpy(),
    )
    if force_reason is not None:
        decision = forced(decision, force_reason)
    holdout_metrics = metrics(y, chal_scores)
    slices = slice_metrics(holdout, chal_scores, uc)

    import mlflow
    import mlflow.lightgbm

    with mlflow.start_run(experiment_id=registry.experiment_id(), run_name=f"retrain-{ds}") as run:
        # The tags first: they are how a retry of this run finds what it registered.
        mlflow.set_tags(
            {
                "feature_table": f"{settings.lake_root}/{uc.tables.features.name}",
                "use_case": uc.name,
                "feature_table_version": feature_version,
                "training_data": training_data,
                "code_version": detected_code_version(),
                "dag_id": ctx.dag_id,
                "run_id": ctx.run_id,
                "ds": ds,
                "windows": json.dumps(split.windows()),
            }
        )
        mlflow.log_params(dict(model.params) | {"best_iteration": model.best_iteration})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in holdout_metrics.items() if np.isfinite(v)})
        val = metrics(split.validation[uc.label].astype(int).to_numpy(), model.predict(split.validation))
        mlflow.log_metrics({f"validation_{k}": v for k, v in val.items() if np.isfinite(v)})
        import matplotlib.pyplot as plt

        for name, fig in _plots(y, chal_scores, model.feature_importance()).items():
            mlflow.log_figure(fig, f"plots/{name}")
            plt.close(fig)
        mlflow.log_dict(slices, "metrics/slices.json")
        mlflow.log_dict(json.loads(decision.to_json()), "gate/decision.json")
        info = mlflow.lightgbm.log_model(
            model.booster,
            name="model",
            registered_model_name=settings.model,
            pip_requirements=_model_requirements(),  # explicit: no slow, guessed inference
        )
        version = str(info.registered_model_version)
        decision = dataclasses.replace(decision, challenger=version)
        card = model_card(version, settings, feature_version, split, holdout_metrics, slices, decision, uc,
                          reliability(y, chal_scores))
        mlflow.log_text(card, "model_card.md")
        mlflow_run_id = run.info.run_id

    registry.tag(
        version,
        {
            "gate.promote": decision.promote,
            "gate.forced": decision.forced,
            "gate.reasons": "; ".join(decision.reasons)[:4000],
            "gate.decision_ds": ds,
            "feature_table_version": feature_version,
            "training_windows": json.dumps(split.windows()),
        },
    )
    return Candidate(
        version=version,
        mlflow_run_id=mlflow_run_id,
        feature_table_version=feature_version,
        training_data=training_data,
        decision=json.loads(decision.to_json()),
        holdout_roc_auc=float(holdout_metrics["roc_auc"]),
    )


def recorded_decisions(lake: Lake, ds: str, version: str) -> list[dict[str, Any]]:
    """The decision rows of ``version`` as of ``ds``, first recorded first."""
    if not lake.has_partition(MODEL_DECISIONS, ds):
        return []
    rows = [r for r in lake.read_partition(MODEL_DECISIONS, ds).to_pylist() if r["model_version"] == version]
    return sorted(rows, key=lambda r: r["recorded_at"])


def awaiting_approval(lake: Lake, ds: str, run_id: str) -> dict[str, Any] | None:
    """What run ``run_id`` asked a person to approve as of ``ds`` and nobody has answered yet, if anything.

    At most one model per run: the candidate the gate would promote, or (with shadow evidence
    required) the challenger that passed on its live days.
    """
    if not lake.has_partition(MODEL_DECISIONS, ds):
        return None
    rows = [r for r in lake.read_partition(MODEL_DECISIONS, ds).to_pylist() if r["run_id"] == run_id]
    answered = {r["model_version"] for r in rows if r["approval_state"] in ANSWERS}
    asked = sorted((r for r in rows if r["approval_state"] == AWAITING and r["model_version"] not in answered),
                   key=lambda r: r["recorded_at"])
    if not asked:
        return None
    row = asked[-1]
    return {"model_version": row["model_version"], "champion_version": row["champion_version"], "ds": ds,
            "run_id": run_id, "forced": bool(row["forced"]), "reason": row["reason"]}


def superseded_by(lake: Lake, ds: str) -> dict[str, Any] | None:
    """A promotion that took effect after the day a decision as of ``ds`` would, if any.

    A re-run of an old week (say after an ETL backfill) may still be a better model than
    the champion of its own time, but a later decision (or a person) has moved the champion
    since: history is not rewritten, so its verdict is recorded and the alias stays.
    """
    later = [r for r in promotion_history(lake) if r[PARTITION_COLUMN] > effective_day(ds)]
    return later[-1] if later else None


def _finish(
    settings: Settings, lake: Lake, registry: Registry, ds: str, candidate: Candidate, ctx: RunContext, *,
    dry_run: bool,
) -> dict[str, Any]:
    """Aliases, the decision row and the promotion record: each step safe to repeat, none rewrites history."""
    decision = candidate.decision
    version = candidate.version
    rows = recorded_decisions(lake, ds, version)
    mine = [r for r in rows if r["run_id"] == ctx.run_id]
    # Decided already: by this run (an earlier try, a cleared task), or by another run on the
    # same data when this one forces nothing. That decision stands: moving an alias now could
    # undo what happened since. A forced promotion by a new run is new history: recorded below.
    recorded = mine[0] if mine else rows[0] if rows and not decision.get("forced") else None
    if recorded is not None:
        if recorded["promoted"]:
            # The try that decided may have died before it recorded the promotion: complete the
            # record, as that run (the record is keyed by run and version: never twice).
            record_promotion(
                lake, effective_day(ds), version, recorded["champion_version"], forced=bool(recorded["forced"]),
                reason=recorded["reason"], ctx=RunContext(ctx.dag_id, recorded["run_id"]), decision_ds=ds,
            )
        log.info("v%s as of %s was decided by %s: %s; nothing to do", version, ds, recorded["run_id"],
                 verdict(recorded))
        return _outcome(ds, candidate, recorded["champion_version"], bool(recorded["promoted"]),
                        bool(recorded["dry_run"]), bool(recorded["forced"]), recorded["reason"], already=True,
                        ) | {"awaiting_approval": awaiting_approval(lake, ds, ctx.run_id)}
    champion_before = decision.get("champion")
    reason = decision.get("forced_reason") or "; ".join(decision.get("reasons") or [])
    shadow = _shadow_step(settings, lake, registry, ds, candidate, ctx, dry_run=dry_run)
    if shadow.evidence is not None:
        decision = decision | {"shadow": shadow.evidence.to_dict()}
    if shadow.note:
        reason = f"{reason}; {shadow.note}" if reason else shadow.note
    promoted = bool(decision["promote"]) and shadow.state is None and not dry_run
    later = superseded_by(lake, ds) if promoted else None
    if later is not None:
        promoted = False
        reason = (f"superseded: v{later['model_version']} is champion from {later[PARTITION_COLUMN]}, after the day "
                  f"this decision would take effect ({effective_day(ds)}); the alias stays. Gate: {reason}")
    awaiting = promoted and usecase.of(settings).spec.gate.approval.required
    if awaiting:
        # A person decides (the approve_promotion task); until then the champion stays.
        promoted = False
        note = "awaiting approval (approve_promotion): the champion stays until a person approves"
        reason = f"{reason}; {note}" if reason else note
    if shadow.state in (None, "challenger"):
        registry.set_alias(CHALLENGER, version)
    previous = None
    if promoted:
        moved_from = registry.promote(version)
        # Already champion means an earlier try moved it: the one it replaced is the gate's champion.
        previous = champion_before if moved_from == version else moved_from
    log.info("gate decision for v%s: %s", version, json.dumps(decision, sort_keys=True))

    lineage = ctx.lineage(ds, {usecase.of(settings).tables.features.name: candidate.feature_table_version},
                          model_version=version)
    lake.append_rows(
        MODEL_DECISIONS,
        ds,
        [
            {
                "model_version": version,
                "champion_version": champion_before,
                "promote": bool(decision["promote"]),
                "promoted": promoted,
                "dry_run": dry_run,
                "forced": bool(decision.get("forced")),
                "reason": reason,
                "feature_table_version": candidate.feature_table_version,
                "decision_json": json.dumps(decision, indent=2, sort_keys=True),
                "run_id": ctx.run_id,
                "recorded_at": dt.datetime.now(dt.UTC),  # an audit time, not business logic
                "training_data": candidate.training_data,
                "shadow_state": shadow.state,
                "shadow_json": None if shadow.evidence is None else json.dumps(shadow.evidence.to_dict()),
                "approval_state": AWAITING if awaiting else None,
                "approved_by": None,
                PARTITION_COLUMN: ds,
            }
        ],
        DECISION_KEY,
        lineage,
    )
    if promoted:
        # A model decided as of D is champion from D+1: D's scores are made with the champion
        # before it, whichever of batch_score D and this run finishes first.
        record_promotion(
            lake, effective_day(ds), version, previous, forced=bool(decision.get("forced")), reason=reason, ctx=ctx,
            decision_ds=ds,
        )
    return _outcome(ds, candidate, champion_before, promoted, dry_run, bool(decision.get("forced")), reason,
                    already=False) | shadow.outcome() | {"awaiting_approval": awaiting_approval(lake, ds, ctx.run_id)}


@dataclasses.dataclass(frozen=True)
class ShadowStep:
    """What the shadow part of a decision did: the evidence of the model in shadow, and the candidate's state."""

    evidence: ShadowEvidence | None = None
    state: str | None = None  # the candidate's shadow_state (None: the offline gate alone decides)
    note: str | None = None
    judged: dict[str, Any] | None = None  # the decision row of the challenger judged on its live days

    def outcome(self) -> dict[str, Any]:
        return {"shadow": None if self.evidence is None else self.evidence.to_dict(), "shadow_state": self.state,
                "shadow_judged": None if self.judged is None else
                {k: self.judged[k] for k in ("model_version", "promoted", "shadow_state", "reason")}}


def _shadow_step(
    settings: Settings, lake: Lake, registry: Registry, ds: str, candidate: Candidate, ctx: RunContext, *,
    dry_run: bool,
) -> ShadowStep:
    """The shadow part of the decision as of ``ds``.

    The evidence of the model in shadow on D is recorded with every decision. When the use
    case requires it (``gate.shadow.required``), that model is judged first once it has its
    days: promoted if better (from D+1, as any decision), retired if not. The candidate is then
    promoted by nobody: it passed the offline gate and goes into shadow (``challenger``), or
    another is still in shadow (``waiting``), or it failed (``rejected``). A first model, with
    no champion to compare with live, and a forced promotion go by the offline gate alone.
    """
    uc = usecase.of(settings)
    spec = uc.spec.gate.shadow
    pending = challenger_on(lake, dt.date.fromisoformat(ds))
    evidence = None if pending is None else evidence_under(spec, shadow_days(lake, ds), pending)
    decision = candidate.decision
    if not spec.required or decision.get("champion") is None or decision.get("forced"):
        return ShadowStep(evidence=evidence)
    judged = None
    if pending is not None and evidence is not None and evidence.verdict != "too few days":
        judged = _judge_in_shadow(lake, registry, ds, pending, evidence, decision.get("champion"), candidate, ctx,
                                  dry_run=dry_run, approval_required=uc.spec.gate.approval.required)
    if judged is not None and judged["shadow_state"] == "promoted":
        state, note = "waiting", f"not shadowed: v{pending} was promoted on its live days"
    elif judged is not None and judged["shadow_state"] == "passed":
        state, note = "waiting", f"not shadowed: v{pending} passed on its live days and awaits approval"
    elif pending is not None and (judged is None or judged["shadow_state"] == "challenger"):
        assert evidence is not None
        state, note = "waiting", (f"not shadowed: v{pending} is in shadow ({evidence.days} of {spec.min_days} "
                                  "matured live days)")
    elif decision["promote"]:
        state, note = "challenger", (f"passed the offline gate: in shadow from {effective_day(ds)}, promoted once "
                                     f"{spec.min_days} matured live days show it better ({spec.metric}, paired "
                                     f"{spec.confidence:.0%} interval above zero)")
    else:
        state, note = "rejected", None
    return ShadowStep(evidence=evidence, state=state, note=note, judged=judged)


def _judge_in_shadow(
    lake: Lake, registry: Registry, ds: str, version: str, evidence: ShadowEvidence, champion: str | None,
    candidate: Candidate, ctx: RunContext, *, dry_run: bool, approval_required: bool = False,
) -> dict[str, Any]:
    """Promote or retire the model in shadow on its live days (with ``approval_required``: ask a person
    to approve it, shadow_state ``passed``); a judgment recorded as of ``ds`` stands."""
    for row in recorded_decisions(lake, ds, version):
        if row["shadow_state"] in ("promoted", "retired", "passed"):
            _card_with_shadow(lake, registry, version, evidence, ds)  # (a try that died before it did)
            return row
    better = evidence.passes
    reason = evidence.describe()
    promoted = better and not dry_run
    later = superseded_by(lake, ds) if promoted else None
    if later is not None:
        promoted = False
        reason = f"superseded: v{later['model_version']} is champion from {later[PARTITION_COLUMN]}. {reason}"
    awaiting = promoted and approval_required
    if awaiting:  # passed on its live days; a person decides whether it becomes champion
        promoted = False
        reason = f"{reason}; awaiting approval (approve_promotion)"
    previous = None
    if promoted:
        moved_from = registry.promote(version)
        previous = champion if moved_from == version else moved_from
    row = {
        "model_version": version, "champion_version": champion, "promote": better, "promoted": promoted,
        "dry_run": dry_run, "forced": False, "reason": reason, "feature_table_version": candidate.feature_table_version,
        "decision_json": json.dumps({"shadow": evidence.to_dict()}, indent=2, sort_keys=True), "run_id": ctx.run_id,
        "recorded_at": dt.datetime.now(dt.UTC), "training_data": None,
        "shadow_state": "passed" if awaiting else "promoted" if promoted else "retired" if not better else "challenger",
        "shadow_json": json.dumps(evidence.to_dict()),
        "approval_state": AWAITING if awaiting else None, "approved_by": None, PARTITION_COLUMN: ds,
    }
    lake.append_rows(MODEL_DECISIONS, ds, [row], DECISION_KEY, ctx.lineage(ds, {}, model_version=version))
    if promoted:
        record_promotion(lake, effective_day(ds), version, previous, forced=False, reason=reason, ctx=ctx,
                         decision_ds=ds)
    log.info("v%s judged on its live days: %s", version, reason)
    _card_with_shadow(lake, registry, version, evidence, ds)
    return row


def _card_with_shadow(lake: Lake, registry: Registry, version: str, evidence: ShadowEvidence, ds: str) -> None:
    """The model card in MLflow gains the live days it was judged on (the view shows the same card)."""
    from sluice.core.shadow import card_section, with_card_section

    card = registry.model_card(version)
    if card is not None:
        registry.write_model_card(version, with_card_section(card, card_section(evidence, shadow_days(lake, ds))))


def _outcome(
    ds: str, candidate: Candidate, champion_before: str | None, promoted: bool, dry_run: bool, forced: bool,
    reason: str, *, already: bool,
) -> dict[str, Any]:
    return {
        "ds": ds,
        "model_version": candidate.version,
        "mlflow_run_id": candidate.mlflow_run_id,
        "champion_before": champion_before,
        "promoted": promoted,
        "dry_run": dry_run,
        "forced": forced,
        "reasons": list(candidate.decision.get("reasons") or []),
        "reason": reason,
        "holdout_roc_auc": round(candidate.holdout_roc_auc, 4),
        "feature_table_version": candidate.feature_table_version,
        "training_data": candidate.training_data,
        "resumed": candidate.resumed,
        "decided_before": already,
    }
