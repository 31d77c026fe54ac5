"""``sluice usecase`` (list, show, check, new), run in-process through argparse."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sluice.core.contracts import split_by_contract
from sluice.core.usecase import EXTRA_COLUMN, builtin_folder, load_use_case
from sluice.ops import usecase_cli

CHURN_YAML = builtin_folder() / "churn" / "usecase.yaml"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):
    """Parse ``sluice usecase ...`` as the sluice command does and call the handler."""
    parser = argparse.ArgumentParser(prog="sluice")
    sub = parser.add_subparsers(dest="command", required=True)
    usecase_cli.add_parser(sub)

    def call(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(["usecase", *map(str, argv)])
        code = args.func(args)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def telemetry(n: int = 36) -> pd.DataFrame:
    rows = []
    for i in range(n):
        action = ("open", "crash", "purchase")[i % 3]
        rows.append({
            "device_uuid": f"d-{i % 4:04x}",
            "ts": f"2026-04-0{1 + i % 3}T{i % 24:02d}:{i % 60:02d}:05Z",
            "action": action,
            "latency_ms": None if action == "crash" else f"{12.5 + i * 3:.1f}",
            "os": ("ios", "android")[i % 2],
            "build": str(1040 + i % 4),
        })
    return pd.DataFrame(rows)


def churn_sample(helpers, n: int = 12) -> pd.DataFrame:
    """Valid churn rows with three defects, one exact copy and an undeclared field."""
    raw = helpers.raw_rows(n)
    raw.loc[1, "amount"] = "-40.00"
    raw.loc[2, "plan"] = "gold"
    raw.loc[4, "event_time"] = "yesterday"
    raw = pd.concat([raw, raw.iloc[[0]]], ignore_index=True)
    return raw.assign(coupon=["SPRING" if i % 2 else None for i in range(len(raw))])


def numbers(out: str) -> dict[str, int]:
    found = re.search(r"rows in: ([\d,]+)\s+valid: ([\d,]+)\s+quarantined: ([\d,]+) .*duplicates removed: ([\d,]+)", out)
    assert found, out
    return dict(zip(("in", "valid", "quarantined", "duplicates"), (int(g.replace(",", "")) for g in found.groups())))


# -- reading a sample --------------------------------------------------------------------------
def test_read_sample_gives_text_from_every_format(tmp_path: Path) -> None:
    csv = tmp_path / "s.csv"
    csv.write_text('id,n,when,note\n1,3,2026-04-01T10:00:00Z,NA\n2,,2026-04-02T11:30:00Z,""\n')
    df = usecase_cli.read_sample(csv)
    assert df.to_dict("records") == [
        {"id": "1", "n": "3", "when": "2026-04-01T10:00:00Z", "note": "NA"},  # "NA" stays text
        {"id": "2", "n": None, "when": "2026-04-02T11:30:00Z", "note": None},
    ]
    lines = tmp_path / "s.jsonl"
    lines.write_text('{"id": 1, "n": 3.5, "when": "2026-04-01", "ok": true}\n\n{"id": "2", "n": null}\n')
    assert usecase_cli.read_sample(lines).to_dict("records") == [
        {"id": "1", "n": "3.5", "when": "2026-04-01", "ok": "true"},
        {"id": "2", "n": None, "when": None, "ok": None},
    ]
    array = tmp_path / "s.json"
    array.write_text('[{"id": 1}, {"id": 2, "x": "y"}]')
    assert usecase_cli.read_sample(array).to_dict("records") == [{"id": "1", "x": None}, {"id": "2", "x": "y"}]
    parquet = tmp_path / "s.parquet"
    pd.DataFrame({
        "id": [1, 2],
        "amount": [1.5, None],
        "when": pd.to_datetime(["2026-04-01T10:00:00+02:00", "2026-04-02T00:00:00Z"], utc=True),
        "day": [pd.Timestamp("2026-04-01").date(), None],
    }).to_parquet(parquet, index=False)
    # Timestamps in UTC with the fraction, as the landing reader (sources.conform) writes them.
    assert usecase_cli.read_sample(parquet).to_dict("records") == [
        {"id": "1", "amount": "1.5", "when": "2026-04-01T08:00:00.000000Z", "day": "2026-04-01"},
        {"id": "2", "amount": None, "when": "2026-04-02T00:00:00.000000Z", "day": None},
    ]
    with pytest.raises(ValueError, match="a sample is"):
        usecase_cli.read_sample(tmp_path / "s.xlsx")


# -- list ---------------------------------------------------------------------------------------
def test_list_shows_every_builtin_deployed_by_default(run) -> None:
    code, out, _ = run("list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for name in ("churn", "purchases"):
        assert re.match(rf"{name}\s+yes\s+built-in\s+{re.escape(str(builtin_folder() / name))}", rows[name])
    assert "Daily activity of a subscription business" in rows["churn"]
    assert "unset: every built-in" in out


def test_list_marks_what_SLUICE_USE_CASES_deploys(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "mine"
    own.mkdir()
    (own / "usecase.yaml").write_text(CHURN_YAML.read_text().replace("name: churn", "name: mine"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "usecase.yaml").write_text("name: broken\n")
    monkeypatch.setenv("SLUICE_USE_CASES", f"churn,{own},{broken}")
    code, out, _ = run("list", "--json")
    assert code == 0
    listed = {e["name"]: e for e in json.loads(out)}
    assert listed["broken"]["deployed"] and "entity: Field required" in listed["broken"]["error"]
    assert listed["churn"]["deployed"] and listed["churn"]["builtin"]
    assert not listed["purchases"]["deployed"]
    assert listed["mine"]["deployed"] and not listed["mine"]["builtin"]
    assert listed["mine"]["folder"] == str(own.resolve())
    code, out, _ = run("list")
    assert re.search(r"^purchases\s+no\s", out, re.M) and re.search(r"^mine\s+yes\s+own\s", out, re.M)


# -- show ---------------------------------------------------------------------------------------
def test_show_prints_fields_features_label_publish(run) -> None:
    code, out, _ = run("show", "churn")
    assert code == 0
    uc = load_use_case("churn")
    for f in uc.describe()["landing_fields"]:
        assert re.search(rf"^\s+{f['field']}\s+{f['type']}\s+{re.escape(f['checks'])}$", out, re.M), f
    for name in uc.feature_columns:
        assert re.search(rf"^\s+{name}\s+(int32|float64|string)$", out, re.M), name
    assert "features (23)" in out and "landing fields (11)" in out
    assert "population: customers with an event in the 30 days" in out
    assert "label: label_churn_30d" in out
    assert "public.churn_scores" in out and "sluice:churn" in out


def test_show_json_is_describe(run) -> None:
    code, out, _ = run("show", "purchases", "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(load_use_case("purchases").describe(), default=str))


def test_show_by_folder_and_unknown(run) -> None:
    assert run("show", str(builtin_folder() / "churn"))[0] == 0
    code, _, err = run("show", "no_such_case")
    assert code == 2 and "no built-in use case 'no_such_case'" in err


# -- check --------------------------------------------------------------------------------------
def test_check_ok(run) -> None:
    code, out, err = run("check", "churn")
    assert code == 0 and not err
    assert out.startswith(f"ok: {CHURN_YAML}: use case churn: 11 landing fields, 23 features from 5 counters")


def test_check_a_bad_key_exits_2_naming_file_and_key(run, tmp_path: Path) -> None:
    data = yaml.safe_load(CHURN_YAML.read_text())
    data["entity"]["type"] = "uuid"
    data["counters"]["spend"] = {"sum": "plan"}
    folder = tmp_path / "churn"
    folder.mkdir()
    (folder / "usecase.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    code, out, err = run("check", folder)
    assert code == 2 and not out
    assert f"{(folder / 'usecase.yaml').resolve()}: entity.type:" in err


def test_check_a_spec_naming_missing_code_exits_2(run, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    text = CHURN_YAML.read_text().replace("name: churn", "name: mine")
    (folder / "usecase.yaml").write_text(text.replace("simulator:SimulatorSource", "nowhere:Gone"))
    code, _, err = run("check", folder)
    assert code == 2 and "simulator.factory" in err and "nowhere:Gone" in err


def test_check_a_sample_prints_what_the_contract_says(run, helpers, tmp_path: Path) -> None:
    sample = churn_sample(helpers)
    path = tmp_path / "sample.csv"
    sample.to_csv(path, index=False)
    code, out, _ = run("check", "churn", "--sample", path)
    assert code == 0  # quarantine is information, not an error

    uc = load_use_case("churn")
    text = usecase_cli.read_sample(path)
    raw = text[uc.raw_fields].assign(**{EXTRA_COLUMN: [
        json.dumps({"coupon": c}) if c is not None else "{}" for c in text["coupon"]]})
    expected = split_by_contract(raw, helpers.DAY, uc)
    assert numbers(out) == {"in": len(sample), "valid": len(expected.valid),
                            "quarantined": len(expected.quarantined), "duplicates": expected.duplicates}
    assert numbers(out) == {"in": 13, "valid": 9, "quarantined": 3, "duplicates": 1}
    for reason, n in expected.failures.items():
        assert f"  {reason} ({n} rows)" in out
    assert "event_time: parse_timestamp (1 rows)" in out  # the row whose time does not parse: day 1
    assert "amount: in_range(0, 10000) (1 rows)" in out
    assert "not in the spec (kept in raw/events.extra_fields): coupon" in out
    assert "missing from the sample (the whole day would be refused): none" in out
    assert "this day would fail" in out  # 3 of 12 is above the 5% limit


def test_check_a_sample_over_several_days_splits_by_utc_day(run, helpers, tmp_path: Path) -> None:
    day1, day2 = helpers.raw_rows(6), helpers.raw_rows(6, helpers.DAY.replace(day=2))
    day2.loc[0, "event_time"] = "2026-03-01T23:30:00-02:00"  # the 2nd in UTC, under day 1's name
    day2.loc[1, "event_time"] = "soon"  # does not parse: reported with the first day
    day2.loc[1, "event_id"] = "e-odd"
    sample = pd.concat([day1, day2], ignore_index=True)
    path = tmp_path / "sample.jsonl"
    sample.to_json(path, orient="records", lines=True)
    code, out, _ = run("check", "churn", "--sample", path)
    assert code == 0
    assert "days: 2 (2026-03-01 to 2026-03-02)" in out
    assert numbers(out) == {"in": 12, "valid": 11, "quarantined": 1, "duplicates": 0}
    assert re.search(r"2026-03-01: 7 in, 6 valid, 1 quarantined", out)
    assert re.search(r"2026-03-02: 5 in, 5 valid, 0 quarantined", out)
    assert "event_time: parse_timestamp (1 rows)" in out


def test_check_a_sample_missing_a_field_exits_1(run, helpers, tmp_path: Path) -> None:
    path = tmp_path / "sample.csv"
    helpers.raw_rows(6).drop(columns=["device", "signup_date"]).to_csv(path, index=False)
    code, out, _ = run("check", "churn", "--sample", path)
    assert code == 1
    assert "missing from the sample (the whole day would be refused): device, signup_date" in out


def test_check_an_unreadable_sample_exits_2(run, tmp_path: Path) -> None:
    path = tmp_path / "sample.txt"
    path.write_text("x")
    code, _, err = run("check", "churn", "--sample", path)
    assert code == 2 and "cannot read sample" in err


# -- new ----------------------------------------------------------------------------------------
def test_new_scaffolds_a_valid_use_case_and_refuses_to_overwrite(run, tmp_path: Path) -> None:
    sample_path = tmp_path / "telemetry.csv"
    telemetry().to_csv(sample_path, index=False)
    where = tmp_path / "usecases"
    code, out, err = run("new", "telemetry", "--sample", sample_path, "--dir", where)
    assert code == 0, err
    spec_file = where / "telemetry" / "usecase.yaml"
    assert out.startswith(f"wrote {spec_file}")
    uc = load_use_case(spec_file.parent)
    assert (uc.key, uc.event_time, uc.spec.events.kind) == ("device_uuid", "ts", "action")
    assert "# " in spec_file.read_text()
    assert f"sluice usecase check {where / 'telemetry'} --sample {sample_path}" in out
    env = f"SLUICE_USE_CASES={where / 'telemetry'} SLUICE_SOURCE=files"
    assert f"{env} sluice land {sample_path}" in out
    assert f"{env} sluice load-history --from 2026-04-01 --to 2026-04-03" in out

    before = spec_file.read_text()
    code, _, err = run("new", "telemetry", "--sample", sample_path, "--dir", where)
    assert code == 2 and "refusing to overwrite" in err
    assert spec_file.read_text() == before

    # The sample passes the contract guessed from it.
    code, out, _ = run("check", spec_file.parent, "--sample", sample_path)
    assert code == 0
    assert numbers(out) == {"in": 36, "valid": 36, "quarantined": 0, "duplicates": 0}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("Telemetry", "not a use case name", id="upper-case"),
        pytest.param("my-case", "not a use case name", id="dash"),
        pytest.param("churn", "built-in", id="builtin"),
    ],
)
def test_new_refuses_bad_names(run, tmp_path: Path, name: str, message: str) -> None:
    sample_path = tmp_path / "telemetry.csv"
    telemetry().to_csv(sample_path, index=False)
    code, _, err = run("new", name, "--sample", sample_path, "--dir", tmp_path / "usecases")
    assert code == 2 and message in err
    assert not (tmp_path / "usecases").exists()


def test_new_says_what_it_cannot_guess(run, tmp_path: Path) -> None:
    sample_path = tmp_path / "s.csv"
    telemetry().drop(columns=["ts"]).to_csv(sample_path, index=False)
    code, _, err = run("new", "telemetry", "--sample", sample_path, "--dir", tmp_path / "usecases")
    assert code == 2 and "--time" in err
    assert not (tmp_path / "usecases").exists()


def test_main_runs_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert usecase_cli.main(["usecase", "check", "churn"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
