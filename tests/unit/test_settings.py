"""Settings: read from SLUICE_* variables when asked for, never at import."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from sluice.core.usecase import load_use_case, of
from sluice.settings import Settings, builtin_use_cases, load_settings
from sluice.stages.etl import max_invalid_share
from sluice.stages.retrain import warmup_days


def test_defaults_without_any_variable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.lake_uri == (tmp_path / ".lake").resolve().as_uri()
    assert s.source == "simulator"
    assert s.sim_defect_days == []
    assert s.sim_defect_rate == 0.0
    assert s.sim_drift == ""
    # Every built-in use case, sorted; the first is the one a process works on.
    assert s.use_cases == ["churn", "purchases"] == builtin_use_cases()
    assert (s.use_case, s.use_case_name) == ("churn", "churn")
    assert s.lake_root == f"{s.lake_uri}/churn"
    assert s.landing == f"{s.lake_uri}/churn/landing/events"
    assert (s.model_name, s.experiment_name) == (None, None)
    assert (s.model, s.experiment) == ("sluice-churn", "sluice-churn")
    # The use case's spec decides unless the deployment overrides it.
    assert (s.train_warmup_days, s.train_max_days, s.contract_max_invalid_share) == (None, None, None)
    assert s.storage_options() == {}


def test_unset_overrides_take_the_use_cases_values(tmp_path):
    churn = load_settings(lake_uri=str(tmp_path))
    purchases = churn.for_use_case("purchases")
    assert (max_invalid_share(churn, of(churn)), warmup_days(churn, of(churn))) == (0.05, 90)
    assert of(churn).spec.training.max_days == 60
    spec = load_use_case("purchases")  # (its own values, whatever they are)
    assert (max_invalid_share(purchases, of(purchases)), warmup_days(purchases, of(purchases))) == (
        spec.spec.contract.max_invalid_share, spec.warmup_days)


def test_set_overrides_win_over_the_use_cases_values(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_TRAIN_WARMUP_DAYS", "0")
    monkeypatch.setenv("SLUICE_TRAIN_MAX_DAYS", "14")
    monkeypatch.setenv("SLUICE_CONTRACT_MAX_INVALID_SHARE", "0")
    s = load_settings(lake_uri=str(tmp_path))
    assert (s.train_warmup_days, s.train_max_days, s.contract_max_invalid_share) == (0, 14, 0.0)
    uc = of(s)
    assert (warmup_days(s, uc), max_invalid_share(s, uc)) == (0, 0.0), "an override of 0 is not 'unset'"


# -- use cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "use_cases", "use_case"),
    [
        ("churn", ["churn"], "churn"),
        ("purchases", ["purchases"], "purchases"),
        ("purchases,churn", ["purchases", "churn"], "purchases"),  # the order given, the first by default
        (" churn , purchases ,", ["churn", "purchases"], "churn"),
        ("", ["churn", "purchases"], "churn"),  # empty: every built-in
    ],
)
def test_use_cases_are_a_comma_separated_list(monkeypatch, tmp_path, value, use_cases, use_case):
    monkeypatch.setenv("SLUICE_USE_CASES", value)
    s = load_settings(lake_uri=str(tmp_path))
    assert (s.use_cases, s.use_case) == (use_cases, use_case)
    assert s.lake_root == f"{tmp_path.as_uri()}/{use_case}"
    assert s.model == f"sluice-{use_case}"


def test_the_use_case_of_a_process_can_be_named(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_USE_CASES", "churn,purchases")
    monkeypatch.setenv("SLUICE_USE_CASE", "purchases")
    s = load_settings(lake_uri=str(tmp_path))
    assert s.use_cases == ["churn", "purchases"] and s.use_case == "purchases"
    assert (s.lake_root, s.landing) == (f"{tmp_path.as_uri()}/purchases", f"{tmp_path.as_uri()}/purchases/landing/events")
    assert (s.model, s.experiment) == ("sluice-purchases", "sluice-purchases")
    assert of(s).name == "purchases"


def test_a_use_case_folder_goes_by_its_folders_name(tmp_path):
    folder = tmp_path / "teams" / "fraud_alerts"
    for ref in (str(folder), str(folder / "usecase.yaml")):
        s = load_settings(lake_uri="s3://bucket/lake", use_cases=ref)
        assert s.use_cases == [ref] and s.use_case == ref
        assert s.use_case_name == "fraud_alerts"
        assert s.lake_root == "s3://bucket/lake/fraud_alerts"
        assert s.model == "sluice-fraud_alerts"


def test_model_and_experiment_names_can_be_set(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_MODEL_NAME", "churn-v2")
    s = load_settings(lake_uri=str(tmp_path), experiment_name="lab")
    assert (s.model, s.experiment) == ("churn-v2", "lab")
    assert Settings(lake_uri=str(tmp_path)).model == "churn-v2"


def test_for_use_case_is_the_same_deployment_on_another_use_case(tmp_path):
    churn = load_settings(lake_uri=str(tmp_path), sim_customers=77, use_cases="churn,purchases")
    purchases = churn.for_use_case("purchases")
    assert (purchases.use_case, purchases.lake_root, purchases.model) == (
        "purchases", f"{tmp_path.as_uri()}/purchases", "sluice-purchases")
    assert (purchases.lake_uri, purchases.sim_customers, purchases.use_cases) == (
        churn.lake_uri, 77, ["churn", "purchases"])
    # The original is unchanged: still churn, its own prefix.
    assert (churn.use_case, churn.lake_root, churn.model) == ("churn", f"{tmp_path.as_uri()}/churn", "sluice-churn")
    assert of(purchases).name == "purchases"
    assert purchases.for_use_case("churn") == churn


def test_sluice_home_moves_the_default_lake(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    s = load_settings()
    assert s.lake_uri == (tmp_path / "home" / ".lake").resolve().as_uri()
    assert s.mlflow_tracking_uri == f"sqlite:///{(tmp_path / 'home' / '.mlflow' / 'mlflow.db').resolve()}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-03", [dt.date(2026, 1, 3)]),
        ("2026-01-03,2026-01-05", [dt.date(2026, 1, 3), dt.date(2026, 1, 5)]),
        (" 2026-01-03 , 2026-01-05 ,", [dt.date(2026, 1, 3), dt.date(2026, 1, 5)]),
        ("", []),
    ],
)
def test_defect_days_are_a_comma_separated_list(monkeypatch, value, expected):
    monkeypatch.setenv("SLUICE_SIM_DEFECT_DAYS", value)
    assert load_settings().sim_defect_days == expected


def test_bad_defect_day_is_refused(monkeypatch):
    monkeypatch.setenv("SLUICE_SIM_DEFECT_DAYS", "2026-01-03,someday")
    with pytest.raises(ValidationError, match="sim_defect_days"):
        load_settings()


def test_typed_values_are_parsed_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLUICE_SIM_CUSTOMERS", "1234")
    monkeypatch.setenv("SLUICE_SIM_SEED", "42")
    monkeypatch.setenv("SLUICE_SIM_EPOCH", "2025-07-01")
    monkeypatch.setenv("SLUICE_SIM_DEFECT_RATE", "0.125")
    monkeypatch.setenv("SLUICE_SIM_DRIFT", "spend_shift@2026-03-01")
    monkeypatch.setenv("SLUICE_CONTRACT_MAX_INVALID_SHARE", "0.2")
    monkeypatch.setenv("SLUICE_SOURCE", "files")
    monkeypatch.setenv("sluice_s3_region", "eu-west-1")  # case-insensitive names
    s = load_settings()
    assert (s.sim_customers, s.sim_seed, s.sim_epoch) == (1234, 42, dt.date(2025, 7, 1))
    assert s.sim_defect_rate == 0.125
    assert s.sim_drift == "spend_shift@2026-03-01"
    assert s.contract_max_invalid_share == 0.2
    assert s.source == "files"
    assert s.s3_region == "eu-west-1"


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("SLUICE_SIM_CUSTOMERS", "0", "sim_customers"),
        ("SLUICE_SIM_CUSTOMERS", "many", "sim_customers"),
        ("SLUICE_SIM_DEFECT_RATE", "1.5", "sim_defect_rate"),
        ("SLUICE_CONTRACT_MAX_INVALID_SHARE", "-0.1", "contract_max_invalid_share"),
        ("SLUICE_TRAIN_WARMUP_DAYS", "-1", "train_warmup_days"),
        ("SLUICE_TRAIN_MAX_DAYS", "3", "train_max_days"),
        ("SLUICE_SOURCE", "kafka", "source"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(monkeypatch, name, value, field):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=field):
        load_settings()


def test_overrides_win_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_SIM_CUSTOMERS", "1234")
    monkeypatch.setenv("SLUICE_LAKE_URI", str(tmp_path / "from-env"))
    s = load_settings(sim_customers=7, lake_uri=str(tmp_path / "override"))
    assert s.sim_customers == 7
    assert s.lake_uri == (tmp_path / "override").as_uri()


# -- lake and landing URIs -------------------------------------------------------------------------


def test_a_plain_lake_path_becomes_a_file_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_LAKE_URI", str(tmp_path / "lake") + "/")
    s = load_settings()
    assert s.lake_uri == (tmp_path / "lake").as_uri()
    assert s.lake_uri.startswith("file:///")
    assert not s.lake_uri.endswith("/")


def test_a_relative_lake_path_is_resolved_against_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLUICE_LAKE_URI", "data/lake")
    assert load_settings().lake_uri == (tmp_path / "data" / "lake").resolve().as_uri()


def test_a_path_with_spaces_is_percent_encoded(tmp_path):
    s = load_settings(lake_uri=str(tmp_path / "my lake"))
    assert s.lake_uri.endswith("/my%20lake")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("s3://bucket", "s3://bucket"),
        ("file:///srv/lake/", "file:///srv/lake"),
    ],
)
def test_uris_are_kept_without_trailing_slash(value, expected):
    assert load_settings(lake_uri=value).lake_uri == expected


def test_landing_defaults_below_the_lake_and_can_be_set(monkeypatch, tmp_path):
    s = load_settings(lake_uri="s3://bucket/lake")
    assert s.landing == "s3://bucket/lake/churn/landing/events"  # below the use case's own prefix
    assert load_settings(lake_uri="s3://bucket/lake", use_case="purchases").landing == (
        "s3://bucket/lake/purchases/landing/events")
    monkeypatch.setenv("SLUICE_LANDING_URI", str(tmp_path / "drop"))
    s = load_settings(lake_uri="s3://bucket/lake")
    assert s.landing_uri == (tmp_path / "drop").as_uri()
    assert s.landing == s.landing_uri


# -- storage options -------------------------------------------------------------------------------


def test_storage_options_are_empty_on_the_local_filesystem(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    assert load_settings(lake_uri=str(tmp_path)).storage_options() == {}
    assert load_settings(lake_uri=tmp_path.as_uri()).storage_options() == {}


RETRIES = {"max_retries": "1200", "retry_timeout": "120s", "backoff_config.init_backoff": "100ms",
           "backoff_config.max_backoff": "5s", "backoff_config.base": "2", "timeout": "60s", "connect_timeout": "5s"}


def test_storage_options_on_s3_use_conditional_puts():
    opts = load_settings(lake_uri="s3://bucket/lake").storage_options()
    assert opts == {"AWS_REGION": "us-east-1", "AWS_CONDITIONAL_PUT": "etag"} | RETRIES


def test_storage_options_with_an_http_endpoint_allow_http(monkeypatch):
    monkeypatch.setenv("SLUICE_LAKE_URI", "s3://lake")
    monkeypatch.setenv("SLUICE_S3_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("SLUICE_S3_REGION", "eu-central-1")
    opts = load_settings().storage_options()
    assert opts == {
        "AWS_REGION": "eu-central-1",
        "AWS_CONDITIONAL_PUT": "etag",
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_ALLOW_HTTP": "true",
    } | RETRIES


def test_object_store_retries_follow_the_timeout_settings(monkeypatch):
    """An outage of SLUICE_TIMEOUT_OBJECT_STORE_RETRY_S seconds is ridden out inside one call."""
    monkeypatch.setenv("SLUICE_TIMEOUT_OBJECT_STORE_RETRY_S", "300")
    opts = load_settings(lake_uri="s3://lake").storage_options()
    assert opts["retry_timeout"] == "300s" and opts["max_retries"] == "3000"
    assert load_settings(lake_uri="/tmp/lake").storage_options() == {}


def test_storage_options_with_an_https_endpoint_do_not_allow_http():
    opts = load_settings(lake_uri="s3://lake", s3_endpoint_url="https://s3.example.com").storage_options()
    assert opts["AWS_ENDPOINT_URL"] == "https://s3.example.com"
    assert "AWS_ALLOW_HTTP" not in opts


def test_storage_options_pass_aws_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")  # empty: left out
    opts = load_settings(lake_uri="s3://lake").storage_options()
    assert opts["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert opts["AWS_SECRET_ACCESS_KEY"] == "not-a-real-secret"
    assert "AWS_SESSION_TOKEN" not in opts


def test_storage_options_read_credentials_when_called_not_when_loaded(monkeypatch):
    s = load_settings(lake_uri="s3://lake")
    assert "AWS_ACCESS_KEY_ID" not in s.storage_options()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALATER")
    assert s.storage_options()["AWS_ACCESS_KEY_ID"] == "AKIALATER"


# -- nothing at import -----------------------------------------------------------------------------


def test_each_call_reads_the_environment_anew(monkeypatch, tmp_path):
    monkeypatch.setenv("SLUICE_LAKE_URI", str(tmp_path / "a"))
    monkeypatch.setenv("SLUICE_SIM_CUSTOMERS", "10")
    first = load_settings()
    monkeypatch.setenv("SLUICE_LAKE_URI", str(tmp_path / "b"))
    monkeypatch.setenv("SLUICE_SIM_CUSTOMERS", "20")
    second = load_settings()
    assert (first.lake_uri, first.sim_customers) == ((tmp_path / "a").as_uri(), 10)
    assert (second.lake_uri, second.sim_customers) == ((tmp_path / "b").as_uri(), 20)
    assert isinstance(second, Settings)


def test_importing_the_package_reads_no_settings(tmp_path):
    """With invalid SLUICE_* variables the modules still import; only load_settings() fails,
    and it sees the variables as they are when it is called."""
    code = (
        "import os\n"
        "import sluice.settings, sluice.tables, sluice.core.lineage, sluice.core.usecase, sluice.edges.lake\n"
        "import sluice.edges.sources, sluice.edges.storage\n"
        "from pydantic import ValidationError\n"
        "try:\n"
        "    sluice.settings.load_settings()\n"
        "except ValidationError as exc:\n"
        "    print('refused', sorted(e['loc'][0] for e in exc.errors()))\n"
        "os.environ['SLUICE_SIM_CUSTOMERS'] = '5'\n"
        "os.environ['SLUICE_SOURCE'] = 'files'\n"
        "os.environ['SLUICE_LAKE_URI'] = os.environ['LATER_LAKE']\n"
        "s = sluice.settings.load_settings()\n"
        "print('loaded', s.lake_uri, s.sim_customers, s.source)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "AWS_"))}
    env |= {
        "SLUICE_SIM_CUSTOMERS": "not-a-number",
        "SLUICE_SOURCE": "nonsense",
        "SLUICE_CODE_VERSION": "unit-test",
        "LATER_LAKE": str(tmp_path / "later"),
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused ['sim_customers', 'source']",
        f"loaded {(tmp_path / 'later').as_uri()} 5 files",
    ]
