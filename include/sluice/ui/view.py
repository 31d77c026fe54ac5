"""What the Sluice view in the Airflow UI shows, as plain dicts and lists.

The plugin (``plugins/sluice_view.py``) only routes and authenticates; everything it
shows comes from here: the champion and its history, the gate's decisions with every
check, the drift share and realised performance over time, and how fresh every table
is. The data functions take :class:`~sluice.settings.Settings` and read the lake and
the registry through the package; :func:`line_chart` is pure geometry for the inline
SVG charts; :func:`render_page` fills the Jinja2 template (every value escaped);
:func:`read_report` reads one drift report back from the object store, and nothing
else under the lake.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlparse

from sluice.edges.lake import Lake, check_day
from sluice.settings import Settings, use_case_name
from sluice.stages.staleness import stale_days
from sluice.tables import (
    DRIFT_HISTORY,
    MODEL_DECISIONS,
    PARTITION_COLUMN,
    PERFORMANCE_HISTORY,
    VOLUME_HISTORY,
)

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
# The files of one day's drift report that the view serves, and their media types.
REPORT_FILES: dict[str, str] = {"report.html": "text/html; charset=utf-8", "report.json": "application/json"}


class ReportNotFound(LookupError):
    """No such drift report (or a name the view does not serve)."""


# -- small helpers ------------------------------------------------------------------------------
def _iso(value: Any) -> Any:
    """Timestamps as ISO text, so that every result is JSON-ready."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _iso(v) for k, v in row.items()}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def anchor(*parts: str | None) -> str:
    """An HTML id made of safe characters only (run ids carry ':' and '+')."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)) for p in parts if p)


def decision_anchor(ds: str, run_id: str, version: str, approval_state: str | None = None) -> str:
    """The id of one decision row: a run may record two models (one judged in shadow) and, with an
    approval, the question and its answer."""
    return anchor("decision", ds, run_id, f"v{version}", approval_state)


def format_number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def flatten_numbers(numbers: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The numbers of a gate check as (name, formatted value) rows, nested keys joined by dots.

    A list of records (the slices examined) is labelled by each record's ``slice`` or
    ``name`` when it has one, else by its position.
    """
    if isinstance(numbers, Mapping):
        rows: list[tuple[str, str]] = []
        for key in sorted(numbers, key=str):
            rows += flatten_numbers(numbers[key], f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(numbers, list | tuple):
        rows = []
        for i, item in enumerate(numbers):
            label = item.get("slice") or item.get("name") if isinstance(item, Mapping) else None
            rest = {k: v for k, v in item.items() if k not in ("slice", "name")} if label else item
            rows += flatten_numbers(rest, f"{prefix}[{label if label else i}]")
        return rows
    return [(prefix, format_number(numbers))]


# -- the data -----------------------------------------------------------------------------------
_registry_lock = threading.Lock()
_registries: dict[tuple[str, str, str | None], Any] = {}


def _registry(settings: Settings) -> Any:
    """One registry client per tracking store, kept for the life of the process.

    Importing MLflow and opening its store takes tens of seconds on a busy machine:
    the API server pays it once (see :func:`warm_up`), not on every page.
    """
    from sluice.edges.registry import Registry

    key = (settings.mlflow_tracking_uri, settings.model, settings.s3_endpoint_url)
    with _registry_lock:
        if key not in _registries:
            _registries[key] = Registry(settings)
        return _registries[key]


def registry_aliases(settings: Settings) -> dict[str, str]:
    """Alias -> version of the registered model; empty while nothing was ever registered.

    A local SQLite tracking store that does not exist yet means no model: it is not
    created just to be read.
    """
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    return dict(_registry(settings).aliases())


def warm_up(settings: Settings) -> None:
    """Import and open what the page needs (MLflow above all) before anyone asks for it."""
    import sluice.stages.monitoring  # noqa: F401  (pandas, numpy)

    registry_aliases(settings)


def champion(
    settings: Settings, aliases: Mapping[str, str] | None = None, lake: Lake | None = None
) -> dict[str, Any]:
    """The champion now (registry alias), and every promotion, newest first."""
    from sluice.edges.registry import CHALLENGER, CHAMPION, PREVIOUS
    from sluice.stages import promotions

    aliases = registry_aliases(settings) if aliases is None else aliases
    history = []
    for row in reversed(promotions.history(lake or Lake(settings))):
        row = _plain(row)
        row["since"] = row.pop(PARTITION_COLUMN)
        row["decision_anchor"] = decision_anchor(row["decision_ds"], row["run_id"], row["model_version"],
                                                 "approved" if row.get("approved_by") else None) if row["decision_ds"] else None
        history.append(row)
    return {
        "model_name": settings.model,
        "current": aliases.get(CHAMPION),
        "previous": aliases.get(PREVIOUS),
        "challenger": aliases.get(CHALLENGER),
        "aliases": dict(sorted(aliases.items())),
        "history": history,
    }


def decisions(settings: Settings, lake: Lake | None = None) -> list[dict[str, Any]]:
    """Every gate decision, newest first, with its checks, their numbers and reasons."""
    from sluice.stages import promotions

    lake = lake or Lake(settings)
    if not lake.exists(MODEL_DECISIONS):
        return []
    from sluice.core import usecase
    from sluice.core.approval import ANSWERS, AWAITING
    from sluice.core.names import dag_id

    rows = sorted(lake.read_table(MODEL_DECISIONS).to_pylist(), key=lambda r: (r[PARTITION_COLUMN], r["recorded_at"]))
    answered = {(r["model_version"], r["run_id"]) for r in rows if r.get("approval_state") in ANSWERS}
    uc = usecase.of(settings)
    retrain_dag = dag_id(uc.name, "weekly_retrain")
    out = []
    for row in reversed(rows):
        record = json.loads(row["decision_json"] or "{}")
        item = _plain({k: v for k, v in row.items() if k not in ("decision_json", "shadow_json")})
        item["shadow"] = json.loads(row.get("shadow_json") or "null")
        item["verdict"] = promotions.verdict(row)
        item["feature_table"] = uc.tables.features.name
        item["approval_link"] = None
        if row.get("approval_state") == AWAITING:
            if (row["model_version"], row["run_id"]) in answered:
                item["verdict"] = "asked for approval (answered)"
            else:  # Airflow's Required Actions page of the retraining's approval step
                item["approval_link"] = (f"/dags/{quote(retrain_dag)}/runs/{quote(row['run_id'])}"
                                         "/tasks/approve_promotion/required_actions")
        item["anchor"] = decision_anchor(row[PARTITION_COLUMN], row["run_id"], row["model_version"],
                                         row.get("approval_state"))
        item["forced_reason"] = record.get("forced_reason")
        item["reasons"] = list(record.get("reasons") or [])
        item["checks"] = [
            {
                "name": check.get("name"),
                "passed": bool(check.get("passed")),
                "reason": check.get("reason"),
                "numbers": flatten_numbers(check.get("numbers") or {}),
            }
            for check in record.get("checks") or []
        ]
        out.append(item)
    return out


def report_path(ds: str, name: str = "report.html", use_case: str | None = None) -> str:
    """Where the view serves a day's report, relative to the view's own URL."""
    query = f"?{urlencode({'use_case': use_case})}" if use_case else ""
    return f"reports/{check_day(ds)}/{name}{query}"


def drift_history(settings: Settings, lake: Lake | None = None) -> dict[str, Any]:
    """The drift share of every reported day, oldest first, with a link to its report."""

    policy = settings.drift
    lake = lake or Lake(settings)
    rows = sorted(lake.read_table(DRIFT_HISTORY).to_pylist(), key=lambda r: r[PARTITION_COLUMN]) if lake.exists(DRIFT_HISTORY) else []
    days = []
    for row in rows:
        item = _plain(row)
        item["drifted_columns"] = json.loads(row["drifted_columns"] or "[]")
        item["report"] = report_path(row[PARTITION_COLUMN], use_case=settings.use_case_name)
        days.append(item)
    return {"threshold": policy.drift_share_threshold, "days": days}


def performance_history(settings: Settings, lake: Lake | None = None) -> dict[str, Any]:
    """Realised ROC-AUC / PR-AUC of every scored day whose labels matured, oldest first."""

    policy = settings.drift
    lake = lake or Lake(settings)
    rows = (
        sorted(lake.read_table(PERFORMANCE_HISTORY).to_pylist(), key=lambda r: r[PARTITION_COLUMN])
        if lake.exists(PERFORMANCE_HISTORY) else []
    )
    return {"roc_auc_floor": policy.performance_roc_auc_floor, "days": [_plain(r) for r in rows]}


def volume_history(settings: Settings, lake: Lake | None = None, last_days: int = 90) -> dict[str, Any]:
    """ingest_raw's volume check of the ``last_days`` most recent checked days, oldest first, with
    the use case's band (``contract.volume``)."""
    from sluice.core import usecase

    spec = usecase.of(settings).spec.contract.volume
    lake = lake or Lake(settings)
    rows = (
        sorted(lake.read_table(VOLUME_HISTORY).to_pylist(), key=lambda r: r[PARTITION_COLUMN])[-last_days:]
        if lake.exists(VOLUME_HISTORY) else []
    )
    days = [_plain(r) | {"alert": r["verdict"] in ("low", "high")} for r in rows]
    return {
        "max_drop": spec.max_drop, "max_rise": spec.max_rise, "trailing_days": spec.trailing_days,
        "fails_day": spec.fail, "days": days, "outside": sum(d["alert"] for d in days),
    }


def shadow(settings: Settings, lake: Lake | None = None, today: dt.date | None = None) -> dict[str, Any]:
    """The challenger in shadow and its live evidence against the champion, with every paired day."""
    from sluice.core import usecase
    from sluice.stages.promotions import shadow_status

    lake = lake or Lake(settings)
    spec = usecase.of(settings).spec.gate.shadow
    challenger, evidence, rows = shadow_status(lake, spec, today or dt.date.today())
    return {
        "required": spec.required, "min_days": spec.min_days, "metric": spec.metric, "challenger": challenger,
        "evidence": None if evidence is None else _plain(evidence.to_dict()) | {"summary": evidence.describe()},
        "days": [_plain(r) for r in reversed(rows)],
    }


class CardNotFound(LookupError):
    """No such model version, or its training run logged no model card."""


def model_card(settings: Settings, version: str, lake: Lake | None = None) -> dict[str, Any]:
    """The model card of ``version`` as its training run logged it in MLflow, with its shadow
    results brought up to date from ``monitoring/shadow_performance``; as Markdown and as HTML
    (rendered with raw HTML off: a value in the card can never become markup)."""
    from markdown_it import MarkdownIt
    from mlflow.exceptions import MlflowException

    from sluice.core import usecase
    from sluice.core.shadow import card_section, evidence_under, with_card_section
    from sluice.stages.promotions import shadow_days

    if not re.fullmatch(r"[0-9]{1,9}", version):
        raise ValueError(f"not a model version: {version!r}")
    lake = lake or Lake(settings)
    try:
        card = _registry(settings).model_card(version)
    except MlflowException as exc:
        raise CardNotFound(f"v{version} of {settings.model}: {exc}") from exc
    if card is None:
        raise CardNotFound(f"v{version} of {settings.model} has no model card")
    rows = shadow_days(lake)
    evidence = None
    if any(r["challenger_version"] == version for r in rows):
        evidence = evidence_under(usecase.of(settings).spec.gate.shadow, rows, version)
    markdown = with_card_section(card, card_section(evidence, rows))
    aliases = [alias for alias, v in registry_aliases(settings).items() if v == version]
    return {"version": version, "model_name": settings.model, "use_case": settings.use_case_name,
            "aliases": sorted(aliases), "markdown": markdown,
            "html": MarkdownIt("js-default").render(markdown),
            "shadow": None if evidence is None else _plain(evidence.to_dict())}


def render_card(card: Mapping[str, Any]) -> str:
    """The HTML page of a model card (the card's HTML is markdown-it's, from escaped text)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("model_card.html").render(card=card)


def freshness(settings: Settings, lake: Lake | None = None) -> list[dict[str, Any]]:
    """Every table of the lake: Delta version, latest partition and its rows, the last writer, and
    its files and bytes after the last lake_maintenance run (``lake/upkeep``; None before one)."""
    from sluice.stages.upkeep import upkeep_summary

    lake = lake or Lake(settings)
    upkeep = {u["table"]: u for u in upkeep_summary(settings, lake)}
    out = []
    for status in lake.status():
        item = asdict(status)
        commit = item.pop("last_commit")
        item["last_commit"] = (
            {k: commit[k] for k in ("dag_id", "run_id", "ds", "code_version")} if commit else None
        )
        kept = upkeep.get(item["table"])
        item["upkeep"] = dict(kept) if kept and kept["last_upkeep"] is not None else None
        out.append(item)
    return out


def _section(name: str, build: Callable[[], Any]) -> dict[str, Any]:
    """One part of the page; a failure is shown in its place instead of failing the whole page."""
    try:
        return {"ok": True, "data": build()}
    except Exception as exc:  # the other sections are still worth showing; the error is shown, not hidden
        log.exception("sluice view: %s failed", name)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def for_use_case(settings: Settings, name: str | None) -> Settings:
    """The settings of the use case the page asks for (``?use_case=``); only a deployed one."""
    if not name:
        return settings
    for ref in settings.use_cases:
        if use_case_name(ref) == name:
            return settings.for_use_case(ref)
    raise UnknownUseCase(f"{name!r} is not a use case of this deployment")


class UnknownUseCase(LookupError):
    pass


STALE_COMMITS = 400  # of the state and curated logs read per page for the stale banner (sluice status reads all)


def overview(settings: Settings, now: dt.datetime | None = None) -> dict[str, Any]:
    """All the view shows, section by section (each either ``data`` or an ``error``).

    One ``Lake`` for the whole page: each table is opened once (freshness opens them all).
    """
    lake = Lake(settings)
    aliases = _section("registry", lambda: registry_aliases(settings))
    return {
        "generated_at": _iso(now or dt.datetime.now(dt.UTC)),  # when the page was built: display only
        "lake_uri": settings.lake_root,
        "model_name": settings.model,
        "use_case": settings.use_case_name,
        # The switch: every use case of the deployment, with the query that shows it.
        "use_cases": [
            {"name": name, "href": "?" + urlencode({"use_case": name}), "current": name == settings.use_case_name}
            for name in (use_case_name(ref) for ref in settings.use_cases)
        ],
        "registry": aliases,
        "champion": _section("champion", lambda: champion(settings, aliases["data"] if aliases["ok"] else {}, lake)),
        "decisions": _section("decisions", lambda: decisions(settings, lake)),
        "drift": _section("drift", lambda: drift_history(settings, lake)),
        "performance": _section("performance", lambda: performance_history(settings, lake)),
        "volume": _section("volume", lambda: volume_history(settings, lake)),
        "shadow": _section("shadow", lambda: shadow(settings, lake)),
        "freshness": _section("freshness", lambda: freshness(settings, lake)),
        "stale": _section("stale", lambda: stale_days(settings, last_commits=STALE_COMMITS)),
    }


# -- charts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Mapping[str, Any]]  # each: ds, value (None = no value), optional href, alert
    css: str = "s1"


def line_chart(
    series: Sequence[Series],
    *,
    y_min: float = 0.0,
    y_max: float = 1.0,
    reference: float | None = None,
    reference_label: str = "",
    percent: bool = False,
    width: int = 720,
    height: int = 240,
    max_x_labels: int = 8,
) -> dict[str, Any]:
    """Pure geometry of a time chart: x by calendar day, y linear in [y_min, y_max]."""
    left, right, top, bottom = 52, 40, 16, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    days = sorted({p["ds"] for s in series for p in s.points})
    first = dt.date.fromisoformat(days[0]) if days else None
    span = (dt.date.fromisoformat(days[-1]) - first).days if first is not None else 0

    def x_of(ds: str) -> float:
        if first is None or span == 0:
            return left + plot_w / 2
        return round(left + plot_w * (dt.date.fromisoformat(ds) - first).days / span, 1)

    def y_of(value: float) -> float:
        clamped = min(max(value, y_min), y_max)
        return round(top + plot_h * (1 - (clamped - y_min) / (y_max - y_min)), 1)

    def label(value: float) -> str:
        return f"{value:.0%}" if percent else f"{value:.2f}"

    out_series = []
    for s in series:
        points = []
        for p in s.points:
            value = _finite(p.get("value"))
            if value is None:
                continue
            points.append({"x": x_of(p["ds"]), "y": y_of(value), "ds": p["ds"], "label": label(value),
                           "href": p.get("href"), "alert": bool(p.get("alert"))})
        path = " ".join(f"{'M' if i == 0 else 'L'}{p['x']},{p['y']}" for i, p in enumerate(points))
        out_series.append({"name": s.name, "css": s.css, "points": points, "path": path})
    step = max(1, math.ceil(len(days) / max_x_labels))
    x_labels = [{"x": x_of(d), "text": d} for d in days[::step]]
    y_ticks = [{"y": y_of(v), "text": label(v)} for v in (y_min + (y_max - y_min) * i / 4 for i in range(5))]
    ref = None
    if reference is not None:
        ref = {"y": y_of(reference), "text": f"{reference_label} {label(reference)}".strip()}
    return {
        "width": width, "height": height, "left": left, "right": width - right, "top": top,
        "bottom": height - bottom, "series": out_series, "x_labels": x_labels, "y_ticks": y_ticks,
        "reference": ref, "empty": not any(s["points"] for s in out_series),
    }


def charts(data: Mapping[str, Any]) -> dict[str, Any]:
    """The charts of the page, from :func:`overview`'s result."""
    out: dict[str, Any] = {}
    if data["drift"]["ok"]:
        drift = data["drift"]["data"]
        out["drift"] = line_chart(
            [Series("drift share", [{"ds": d["ds"], "value": d["drift_share"], "href": d["report"], "alert": d["alert"]}
                                    for d in drift["days"]], "s1")],
            reference=drift["threshold"], reference_label="alert above", percent=True,
        )
    if data["performance"]["ok"]:
        perf = data["performance"]["data"]
        out["performance"] = line_chart(
            [Series("ROC-AUC", [{"ds": d["ds"], "value": d["roc_auc"], "alert": d["alert"]} for d in perf["days"]], "s1"),
             Series("PR-AUC", [{"ds": d["ds"], "value": d["pr_auc"]} for d in perf["days"]], "s2")],
            reference=perf["roc_auc_floor"], reference_label="ROC-AUC floor",
        )
    if data["volume"]["ok"]:
        volume = data["volume"]["data"]
        out["volume"] = line_chart(
            [Series("rows / trailing median", [{"ds": d["ds"], "value": d["ratio"], "alert": d["alert"]}
                                               for d in volume["days"]], "s1")],
            y_max=1 + volume["max_rise"], reference=1 - volume["max_drop"], reference_label="alert below",
            percent=True,
        )
    return out


# -- the page -----------------------------------------------------------------------------------
def render_page(data: Mapping[str, Any]) -> str:
    """The HTML page of :func:`overview`'s result; autoescaping escapes every value."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.filters["pct"] = lambda v: "-" if _finite(v) is None else f"{float(v):.0%}"
    return env.get_template("sluice_view.html").render(data=data, charts=charts(data))


# -- drift reports ------------------------------------------------------------------------------
def read_report(settings: Settings, ds: str, name: str = "report.html") -> bytes:
    """The drift report file ``name`` of day ``ds``, read from the object store.

    Only ``<lake>/reports/drift/ds=<YYYY-MM-DD>/report.{html,json}`` can be read: ``ds``
    must be a real date (``ValueError`` otherwise), ``name`` one of :data:`REPORT_FILES`,
    and on a local lake the resolved path (symlinks followed) must stay inside the
    reports prefix.
    """
    from pyarrow import fs as pafs

    from sluice.edges.storage import filesystem
    from sluice.stages.monitoring import REPORTS_PREFIX, report_uri

    uri = report_uri(settings, ds, name)  # checks ds
    if name not in REPORT_FILES:
        raise ReportNotFound(f"no report file {name!r}")
    prefix = f"{settings.lake_root}/{REPORTS_PREFIX}/"
    fs, path = filesystem(settings, uri)
    if isinstance(fs, pafs.LocalFileSystem):
        root = os.path.realpath(unquote(urlparse(prefix).path))
        if not os.path.realpath(path).startswith(root + os.sep):
            raise ReportNotFound(f"{uri} resolves outside {prefix}")
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise ReportNotFound(f"no drift report {name} for {ds}") from exc
