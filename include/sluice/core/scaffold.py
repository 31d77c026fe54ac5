"""A first use case spec guessed from a sample of events, written down for a person to check.

``infer_spec`` looks at a sample (text columns, as a source delivers them) and guesses
the entity key, the event time, an event id and an event-kind field, the types and
checks of the other fields, counters, features, a population and a placeholder label.
``render_yaml`` writes that spec as ``usecase.yaml`` with comments that say what was
guessed from what, and what to check before the use case is deployed.

Pure: the caller reads the sample (``sluice usecase new`` does); nothing here touches files.
"""

from __future__ import annotations

import keyword
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd
import yaml

from sluice.core.contracts import EVENT_ID_PATTERN
from sluice.core.usecase import ACTIVE_DAYS, EXTRA_COLUMN
from sluice.tables import PARTITION_COLUMN

WINDOWS = [7, 30, 90]
HORIZON_DAYS = 30
POPULATION_DAYS = 30
MAX_VALUES = 20  # a category with at most this many values seen gets them as its checked values

# Columns the platform adds to its tables: a sample column of that name cannot be a field.
RESERVED = {PARTITION_COLUMN, "event_id", "first_event_date", "last_event_date", "last_label_event_date",
            EXTRA_COLUMN}

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # the spec's rule for a use case (and entity) name
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_INT = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
_EVENT_ID = re.compile(EVENT_ID_PATTERN)

_TIME_WORDS = {"time", "date", "at", "ts", "timestamp", "datetime", "when", "day", "occurred", "created"}
_ENTITY_WORDS = {"customer", "user", "account", "client", "member", "device", "subscriber", "player", "visitor",
                 "patient", "tenant", "owner", "household", "company", "org", "organisation", "organization",
                 "merchant", "shop", "store", "person", "profile", "entity"}
_ID_WORDS = {"id", "uid", "uuid", "guid", "key", "no", "number"}
_KIND_WORDS = {"type", "kind", "event", "action", "activity", "verb", "operation"}


@dataclass
class Inference:
    """A guessed spec and, per dotted key (``entity``, ``fields.os``, ...), what it was guessed from."""

    spec: dict[str, Any]
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, where: str, text: str) -> None:
        self.notes.setdefault(where, []).append(text)


@dataclass(frozen=True)
class _Column:
    name: str
    values: pd.Series  # the non-null values, as text, indexed like the sample
    rows: int  # rows of the sample

    @property
    def nulls(self) -> int:
        return self.rows - len(self.values)

    @cached_property
    def distinct(self) -> int:
        return int(self.values.nunique())

    @cached_property
    def words(self) -> list[str]:
        spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", self.name)
        return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]

    def all_match(self, pattern: re.Pattern[str]) -> bool:
        return len(self.values) > 0 and bool(self.values.str.match(pattern).all())

    @cached_property
    def integers(self) -> bool:
        """Every value a whole number, without a leading zero that an integer would lose ("007")."""
        return self.all_match(_INT) and not self.values.str.match(r"^[+-]?0\d").any()

    @cached_property
    def numbers(self) -> bool:
        return self.all_match(_NUMBER)

    @cached_property
    def dates(self) -> bool:
        return self.all_match(_DATE) and bool(
            pd.to_datetime(self.values, errors="coerce", format="%Y-%m-%d").notna().all()
        )

    @cached_property
    def timestamps(self) -> bool:
        return self.all_match(_TIMESTAMP) and bool(
            pd.to_datetime(self.values, errors="coerce", utc=True, format="ISO8601").notna().all()
        )

    @property
    def identifier(self) -> bool:
        return bool(_IDENT.match(self.name)) and not keyword.iskeyword(self.name)


def _as_text(sample: pd.DataFrame) -> list[_Column]:
    out = []
    for name in sample.columns:
        col = sample[name]
        # As the contract will see them: not stripped ("" and " 12" are values, and fail a number).
        values = col[col.notna()].map(lambda v: v if isinstance(v, str) else str(v)).astype(object)
        out.append(_Column(str(name), values, len(sample)))
    return out


def _id_word(words: Sequence[str]) -> bool:
    return any(w in _ID_WORDS or (w.endswith("id") and w[:-2] in _ENTITY_WORDS) for w in words)


def _key_hint(col: _Column) -> int:
    """3: an entity word and an id word (customer_id, device_uuid); 2: an entity word alone or ``id``;
    1: some id (session_id); 0: nothing suggests a key."""
    words = col.words
    entity = any(w in _ENTITY_WORDS or (w.endswith("id") and w[:-2] in _ENTITY_WORDS) for w in words)
    if entity and _id_word(words):
        return 3
    if (len(words) == 1 and words[0] in _ENTITY_WORDS) or words == ["id"]:
        return 2
    return 1 if _id_word(words) else 0


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k that is >= x (x > 0)."""
    exp = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        candidate = round(m * 10.0**exp, 12)
        if candidate >= x:
            return candidate
    return round(10.0 ** (exp + 1), 12)  # pragma: no cover - 10 x 10^exp >= x always


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def identifier(text: str, taken: set[str], fallback: str = "x") -> str:
    """``text`` as a lower-case identifier (at most 40 characters) not in ``taken``; added to it."""
    base = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")[:40] or fallback
    if not base[0].isalpha():
        base = f"{fallback}_{base}"[:40]
    name, i = base, 2
    while name in taken or keyword.iskeyword(name) or name.startswith("cum_"):
        name = f"{base[:36]}_{i}"
        i += 1
    taken.add(name)
    return name


def _pick(candidates: list[tuple[tuple[Any, ...], _Column]]) -> _Column | None:
    return max(candidates, key=lambda sc: sc[0])[1] if candidates else None


def _find(columns: list[_Column], name: str, what: str) -> _Column:
    for c in columns:
        if c.name == name:
            return c
    raise ValueError(f"the sample has no column {name!r} for the {what} (columns: {[c.name for c in columns]})")


def _guess_time(columns: list[_Column]) -> _Column | None:
    scored = []
    for c in columns:
        if c.identifier and c.name not in RESERVED and (c.timestamps or c.dates):
            hint = any(w in _TIME_WORDS for w in c.words) or c.name.lower().endswith(("at", "ts", "time"))
            scored.append(((hint, c.timestamps, c.nulls == 0, c.distinct), c))
    return _pick(scored)


def _guess_key(columns: list[_Column], taken: set[str]) -> _Column | None:
    scored = []
    for c in columns:
        if c.name in taken or not c.identifier or c.name in RESERVED or not len(c.values):
            continue
        hint = _key_hint(c)
        if hint == 0 or (c.numbers and not c.integers) or c.dates or c.timestamps:
            continue
        if any(w in _KIND_WORDS for w in c.words) and not _id_word(c.words):
            continue
        repeats = len(c.values) / max(c.distinct, 1)
        if repeats < 1.5:
            continue  # (nearly) one row per value: an event id, not an entity
        scored.append(((hint, c.nulls == 0, repeats), c))
    return _pick(scored)


def _guess_id(columns: list[_Column], taken: set[str]) -> _Column | None:
    scored = []
    for c in columns:
        if c.name in taken or not c.identifier or (c.name in RESERVED and c.name != "event_id"):
            continue
        unique = c.nulls == 0 and c.distinct == c.rows and c.rows > 1
        id_like = _id_word(c.words) or any("id" in w for w in c.words)  # event_id, uid, txid, eventId
        if unique and id_like and c.all_match(_EVENT_ID):
            scored.append((("event" in c.words or c.words == ["id"], c.name == "event_id"), c))
    return _pick(scored)


def _guess_kind(columns: list[_Column], taken: set[str]) -> _Column | None:
    scored = []
    for c in columns:
        if c.name in taken or not c.identifier or c.name in RESERVED or c.nulls or not len(c.values):
            continue
        hits = sum(w in _KIND_WORDS for w in c.words)
        if not hits or _id_word(c.words) or c.numbers or c.timestamps or c.dates:
            continue
        if c.distinct <= MAX_VALUES and c.distinct < len(c.values):
            scored.append(((hits, "type" in c.words or "kind" in c.words, -c.distinct), c))
    return _pick(scored)


def _field(c: _Column, inf: Inference) -> dict[str, Any]:
    where = f"fields.{c.name}"
    spec: dict[str, Any]
    if not len(c.values):
        spec = {"type": "string"}
        inf.note(where, "no value in the sample: typed as a string; give it its real type")
    elif c.integers or c.numbers:
        kind = "integer" if c.integers else "number"
        spec = {"type": kind}
        num = pd.to_numeric(c.values)
        low, high = float(num.min()), float(num.max())
        seen = f"{_number(low)} to {_number(high)} in the sample"
        if low >= 0:
            spec["min"] = 0
        if high > 0:
            spec["max"] = _number(_nice_ceiling(10 * high))
            inf.note(where, f"{kind}: {seen}; max is 10x the largest value, rounded up: set the real bounds")
        else:
            inf.note(where, f"{kind}: {seen}; no max guessed: add min/max if the values have bounds")
    elif c.dates:
        spec = {"type": "date"}
        inf.note(where, "date (YYYY-MM-DD); add not_after_day: true if it may not lie after the day "
                        "(a signup date)")
    elif c.timestamps:
        spec = {"type": "timestamp"}
        inf.note(where, "timestamp (ISO 8601)")
    elif c.distinct <= MAX_VALUES and c.distinct < len(c.values):
        spec = {"type": "category", "values": sorted(c.values.unique().tolist())}
        inf.note(where, f"category: the {c.distinct} values seen are checked (another value is quarantined); "
                        "for an open category replace values by known (not checked) and a pattern")
    elif c.distinct <= max(MAX_VALUES, len(c.values) // 10):
        spec = {"type": "category"}
        inf.note(where, f"category with {c.distinct} values in the sample: not checked, learnt in training")
    else:
        spec = {"type": "string"}
        inf.note(where, f"string: {c.distinct} distinct values in {len(c.values)} rows (free text, ids)")
    if c.nulls:
        spec["nullable"] = True
        inf.note(where, f"nullable: {c.nulls} of {c.rows} rows have no value")
    return spec


def _decimals(c: _Column) -> int:
    if c.integers:
        return 0
    if c.values.str.contains(r"[eE]").any():
        return 6
    frac = c.values.str.extract(r"\.(\d*)$")[0].dropna()
    return min(6, int(frac.str.rstrip("0").str.len().max())) if len(frac) else 0


def infer(sample: pd.DataFrame, name: str, *, key: str | None = None, time: str | None = None,
          kind: str | None = None, event_id: str | None = None) -> Inference:
    """Guess a spec from ``sample``; ``key``, ``time``, ``kind`` and ``event_id`` name columns instead
    of guessing them (``kind``/``event_id`` ``""``: none). Raises ValueError when a guess is impossible."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a lower-case identifier (letters, digits, _; 40 at most)")
    if sample.empty:
        raise ValueError("the sample has no rows")
    columns = _as_text(sample)
    inf = Inference(spec={})
    rows = len(sample)

    t = _find(columns, time, "event time") if time else _guess_time(columns)
    if t is None:
        raise ValueError("no column of the sample holds ISO timestamps or dates for the event time "
                         f"(columns: {[c.name for c in columns]}); name it with --time")
    taken = {t.name}
    k = _find(columns, key, "entity key") if key else _guess_key(columns, taken)
    if k is None:
        raise ValueError("no column looks like the entity key (named like customer_id, user_id, account, "
                         f"with several events per value; columns: {[c.name for c in columns]}); "
                         "name it with --key")
    taken.add(k.name)
    kd = (_find(columns, kind, "event kind") if kind else None) if kind is not None else _guess_kind(columns, taken)
    if kd is not None:
        taken.add(kd.name)
    ev_id = (_find(columns, event_id, "event id") if event_id else None) if event_id is not None \
        else _guess_id(columns, taken)
    if ev_id is not None:
        taken.add(ev_id.name)

    # -- entity -------------------------------------------------------------------------
    entity_words = [w for w in k.words if w not in _ID_WORDS]
    entity_name = identifier("_".join(entity_words) or "entity", set(), "entity")
    if entity_name.endswith("id") and entity_name[:-2] in _ENTITY_WORDS:
        entity_name = entity_name[:-2]
    entity: dict[str, Any] = {"name": entity_name, "key": k.name, "type": "integer" if k.integers else "string"}
    per = len(k.values) / max(k.distinct, 1)
    inf.note("entity", f"key {k.name}: {k.distinct} values, {per:.1f} events each in the sample; "
                       + ("integer: every value is a whole number" if k.integers
                          else "string: not every value is a whole number"))
    if k.nulls:
        inf.note("entity", f"{k.nulls} rows have no {k.name}: they will be quarantined (the key is required)")

    # -- events -------------------------------------------------------------------------
    events: dict[str, Any] = {}
    if ev_id is not None:
        events["id"] = ev_id.name
        inf.note("events.id", f"{ev_id.name}: unique in every row of the sample; a second row with the same id "
                              "and other content is quarantined")
    else:
        inf.note("events.id", "no column with a unique id per row: a row's content is its identity "
                              "(exact copies are removed); add id: <column> if the source has one")
    events["time"] = t.name
    inf.note("events.time", f"{t.name}: " + ("ISO timestamps" if t.timestamps else "dates")
             + "; a row belongs to the UTC day of its time, and a time outside that day is quarantined")
    kinds: list[str]
    if kd is not None:
        kinds = sorted(kd.values.unique().tolist())
        events["kind"] = kd.name
        events["kinds"] = kinds
        inf.note("events.kind", f"{kd.name}: {len(kinds)} values in the sample; an event of another kind is "
                                "quarantined: list every kind the source sends")
    else:
        kinds = ["event"]
        events["kinds"] = kinds
        inf.note("events.kind", "no low-cardinality column named like type/kind/event/action: every event is of "
                                "one kind (event); add kind: <column> and its kinds if there are several")

    # -- fields -------------------------------------------------------------------------
    fields: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for c in columns:
        if c.name in taken:
            continue
        if not c.identifier or c.name in RESERVED or c.name.startswith("cum_"):
            skipped.append(c.name)
            continue
        fields[c.name] = _field(c, inf)
    if skipped:
        inf.note("fields", f"not declared (kept per row in {EXTRA_COLUMN}): {skipped}: not identifiers, or names "
                           "the platform uses; rename them at the source to use them")

    # -- counters -------------------------------------------------------------------------
    counters: dict[str, dict[str, Any]] = {}
    counter_names: set[str] = {ACTIVE_DAYS}
    if kd is not None:
        for kind_value in kinds:
            counters[identifier(kind_value, counter_names, "kind")] = {"count": [kind_value]}
    else:
        counters[identifier("events", counter_names)] = {"count": ["event"]}
    by_name = {c.name: c for c in columns}
    for fname, f in fields.items():
        if f["type"] not in ("integer", "number") or not len(by_name[fname].values):
            continue
        counter: dict[str, Any] = {"sum": fname}
        if kd is not None:
            seen_kinds = sorted(set(kd.values.reindex(by_name[fname].values.index).dropna()))
            if set(seen_kinds) != set(kinds) and set(seen_kinds) <= set(kinds):
                counter["kinds"] = seen_kinds
        decimals = _decimals(by_name[fname])
        if decimals:
            counter["decimals"] = decimals
        cname = identifier(f"{fname}_total", counter_names)
        counters[cname] = counter
        inf.note(f"counters.{cname}", f"the sum of {fname}"
                 + (f" over {'/'.join(counter['kinds'])} events (the kinds it has values for)"
                    if "kinds" in counter else "")
                 + (f", kept exactly to {decimals} decimal{'s' if decimals > 1 else ''} (the most in the sample)"
                    if decimals else "")
                 + f"; drop it if a sum of {fname} means nothing (a code, a version)")

    # -- features -------------------------------------------------------------------------
    label = identifier(f"label_no_event_{HORIZON_DAYS}d", {*fields, *taken, PARTITION_COLUMN})
    feature_names: set[str] = {k.name, label, PARTITION_COLUMN}
    features: list[dict[str, Any]] = []

    def add(feature: dict[str, Any], *columns_of: str) -> None:
        if feature_names.isdisjoint(columns_of) and all(_IDENT.match(c) for c in columns_of):
            feature_names.update(columns_of)
            features.append(feature)

    add({"name": "days_since_last_event", "recency": True}, "days_since_last_event")
    add({"name": "tenure_days", "tenure": "first_event"}, "tenure_days")
    for cname in [*counters, ACTIVE_DAYS]:
        pattern = f"{cname}_{{w}}d"
        add({"name": pattern, "window": cname, "windows": list(WINDOWS)}, *(f"{cname}_{w}d" for w in WINDOWS))
    for fname, f in fields.items():
        if f["type"] == "category":
            fname_feature = fname if fname not in feature_names else f"latest_{fname}"
            add({"name": fname_feature, "latest": fname}, fname_feature)

    inf.spec = {
        "name": name,
        "description": f"Events of {entity_name}s, scaffolded from a sample of {rows} rows. "
                       "Say what the events are and what is predicted.",
        "intended_use": "",
        "limitations": [
            "Scaffolded from a sample: types and checks (ranges, allowed values) were guessed from it.",
            f"The label is a placeholder: no event in the {HORIZON_DAYS} days after the day.",
        ],
        "entity": entity,
        "events": events,
        "fields": fields,
        "contract": {"max_invalid_share": 0.05},
        "counters": counters,
        "features": features,
        "population": {"active_within_days": POPULATION_DAYS},
        "label": {
            "name": label,
            "when": "no_event",
            "horizon_days": HORIZON_DAYS,
            "description": f"no event in the {HORIZON_DAYS} days after the snapshot day (a placeholder: edit it)",
        },
        "gate": {"primary_metric": "roc_auc", "floors": {"roc_auc": 0.70, "pr_auc_lift": 1.5},
                 "guarded_slices": "all"},
        "risk_bands": [{"min": 0.5, "band": "high"}, {"min": 0.2, "band": "medium"}, {"min": 0.0, "band": "low"}],
        "publish": {"postgres_table": f"public.{name}_scores", "redis_prefix": f"sluice:{name}"},
    }
    return inf


def infer_spec(sample: pd.DataFrame, name: str, **columns: str | None) -> dict[str, Any]:
    """A spec (as ``parse_spec`` takes it) guessed from a sample of events; see :func:`infer`."""
    return infer(sample, name, **columns).spec


# -- writing ----------------------------------------------------------------------------------
_SECTIONS = {
    "intended_use": "Who uses the scores, for what (the model card prints it); limitations: what to beware of.",
    "entity": "What is scored: one row per entity and day. The key identifies it in every event.",
    "events": "How an event is identified, when it happened and what kind it is.",
    "fields": "The other fields of an event, with the checks a row must pass (or go to quarantine).",
    "contract": "Above this share of quarantined rows a day fails instead of loading.",
    "counters": "Running totals per entity since the lake began; a window of w days is state(D) - state(D-w).",
    "features": "What the model sees, built from the counters. Add ratios (ratio: [a, b]) or drop features.",
    "population": "Who is scored on a day: entities with an event in the N days up to it.",
    "label": "TODO: what is predicted. This one is a placeholder (1 when there is no event in the horizon);\n"
             "set when (event | no_event), kinds and horizon_days to what the use case predicts.",
    "gate": "When a retrained model may replace the champion (floors, improvement, guarded slices).",
    "risk_bands": "Score bands published with the scores: lower bounds, decreasing, the last 0.",
    "publish": "Where scores go: a PostgreSQL table, and a Redis hash <prefix>:<day> (a field per entity).",
}


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()


def _comment(lines: Sequence[str], indent: int = 0) -> list[str]:
    pad = " " * indent
    wrapped = [part for text in lines for line in text.splitlines()
               for part in (textwrap.wrap(line, 104 - indent, subsequent_indent="  ") or [""])]
    return [f"{pad}# {line}".rstrip() for line in wrapped]


def _spec_notes(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """What to check, from the spec alone (when no sample notes are given)."""
    notes: dict[str, list[str]] = {}
    for fname, f in (spec.get("fields") or {}).items():
        said = []
        if "max" in f or "min" in f:
            said.append(f"range [{f.get('min', '-inf')}, {f.get('max', 'inf')}] guessed: set the real bounds")
        if "values" in f:
            said.append("only these values pass: another one is quarantined")
        if said:
            notes[f"fields.{fname}"] = said
    ev = spec.get("events") or {}
    notes["events.time"] = [f"{ev.get('time')}: a row belongs to the UTC day of its time"]
    return notes


def render_yaml(spec: Mapping[str, Any], sample_name: str, notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """``usecase.yaml`` for ``spec``: the body is ``yaml.safe_dump``'s, with comment lines that say what
    was guessed (``notes``, by dotted key, as :func:`infer` gives them) and what to check."""
    notes = dict(_spec_notes(spec) if notes is None else notes)
    name = spec.get("name", "?")
    out = _comment([
        f"Use case {name!s}: scaffolded by `sluice usecase new` from {sample_name}.",
        "Every key below was GUESSED from that sample: read it through, fix what is wrong, then run",
        f"  sluice usecase check <this folder> --sample {sample_name}",
        "Reference: the built-in specs in include/usecases/ (`sluice usecase list`); `sluice usecase show NAME` prints what a spec means.",
    ])
    for key, value in spec.items():
        out.append("")
        out += _comment([_SECTIONS[key]] if key in _SECTIONS else [])
        out += _comment(notes.get(key, ()))
        if isinstance(value, Mapping) and value and key in ("entity", "events", "fields", "counters", "label",
                                                             "population", "gate", "publish", "contract"):
            out.append(f"{key}:")
            for sub, item in value.items():
                out += _comment(notes.get(f"{key}.{sub}", ()), indent=2)
                out.append(f"  {_flow(sub)}: {_flow(item)}")
            for where, said in notes.items():  # notes on keys the spec leaves out (no event id, ...)
                head, _, sub = where.partition(".")
                if head == key and sub and sub not in value:
                    out += _comment(said, indent=2)
        elif isinstance(value, list) and value:
            out.append(f"{key}:")
            for i, item in enumerate(value):
                out += _comment(notes.get(f"{key}[{i}]", ()), indent=2)
                out.append(f"  - {_flow(item)}")
        else:
            out.append(yaml.safe_dump({key: value}, sort_keys=False, width=100, allow_unicode=True).rstrip("\n"))
    return "\n".join(out) + "\n"
