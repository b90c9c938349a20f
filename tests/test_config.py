"""Config: layering (file → env → secret files), defaults, and errors that name field and source."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from config import ConfigError, load_settings, parse_duration
from config.logging import Redactor

MAIN = Path(__file__).resolve().parents[1] / "main.py"

GOOD = """
database_url = "sqlite:///hub.db"

[server]
port = 8781
admin_token = "admin-token-123456"

[[shops]]
code = "tmall-flagship"
platform = "tmall"
api_url = "http://127.0.0.1:1/router/rest"
app_key = "12345678"
app_secret = "top-secret-value"
access_token = "session-token-value"
poll_interval = "30s"

[[shops]]
code = "jd-store"
platform = "jd"
api_url = "http://127.0.0.1:1/routerjson"
app_key = "jdkey"
app_secret = "jd-secret-value"
access_token = "jd-access-token"
overlap = "20m"

[[warehouses]]
code = "WH-EAST"
api_url = "http://127.0.0.1:1/router/qimen/service"
app_key = "wmskey"
app_secret = "wms-secret-value"
customer_id = "OWNER1"
provinces = ["上海", "江苏", "浙江"]
default_carrier = "SF"

[[carriers]]
code = "SF"
jd_id = 467
rate_card = "rates/sf.csv"
"""

RATES = "province,first_weight_kg,first_fee,step_kg,step_fee\n浙江,1,8,1,2\n*,1,12,1,5\n"


def write(tmp_path: Path, text: str = GOOD, rates: str | None = RATES) -> Path:
    path = tmp_path / "ecomhub.toml"
    path.write_text(text, encoding="utf-8")
    if rates is not None:
        (tmp_path / "rates").mkdir(exist_ok=True)
        (tmp_path / "rates" / "sf.csv").write_text(rates, encoding="utf-8")
    return path


def test_good_file_loads_with_platform_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path), environ={})
    tmall, jd = settings.shops
    assert tmall.poll_interval == timedelta(seconds=30)
    assert tmall.effective_lag == timedelta(seconds=120)
    assert tmall.effective_overlap == timedelta(minutes=10)
    assert tmall.effective_max_window == timedelta(days=1)
    assert jd.effective_overlap == timedelta(minutes=20)
    assert settings.carriers[0].rate_card == tmp_path / "rates" / "sf.csv"
    assert [r.province for r in settings.carriers[0].rate_card_rows] == ["浙江", "*"]
    assert settings.server.callback_base == "http://127.0.0.1:8781"


def test_env_overrides_file_by_index_and_by_code(tmp_path: Path) -> None:
    env = {
        "ECOMHUB_DATABASE_URL": "postgresql://u@db/hub",
        "ECOMHUB_SERVER__PORT": "9000",
        "ECOMHUB_SHOPS__0__POLL_INTERVAL": "2m",
        "ECOMHUB_SHOPS__JD_STORE__APP_SECRET": "from-env-secret",
        "ECOMHUB_WAREHOUSES__WH_EAST__PRIORITY": "3",
    }
    settings = load_settings(write(tmp_path), environ=env)
    assert settings.database_url == "postgresql://u@db/hub"
    assert settings.server.port == 9000
    assert settings.shops[0].poll_interval == timedelta(minutes=2)
    assert settings.shops[1].app_secret.get_secret_value() == "from-env-secret"
    assert settings.warehouses[0].priority == 3


def test_secret_files_in_file_and_env(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("file-secret-value\n")
    text = GOOD.replace('app_secret = "top-secret-value"', 'app_secret_file = "secret.txt"')
    env = {"ECOMHUB_WAREHOUSES__0__APP_SECRET_FILE": str(tmp_path / "secret.txt")}
    settings = load_settings(write(tmp_path, text), environ=env)
    assert settings.shops[0].app_secret.get_secret_value() == "file-secret-value"
    assert settings.warehouses[0].app_secret.get_secret_value() == "file-secret-value"


def test_a_variable_overrides_the_files_secret_file(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("file-secret-value\n")
    text = GOOD.replace('app_secret = "top-secret-value"', 'app_secret_file = "secret.txt"')
    env = {"ECOMHUB_SHOPS__0__APP_SECRET": "from-env"}
    settings = load_settings(write(tmp_path, text), environ=env)
    assert settings.shops[0].app_secret.get_secret_value() == "from-env"


def test_lists_from_the_environment_are_json(tmp_path: Path) -> None:
    env = {"ECOMHUB_WAREHOUSES__0__PROVINCES": '["江苏", "浙江"]'}
    settings = load_settings(write(tmp_path), environ=env)
    assert settings.warehouses[0].provinces == ["江苏", "浙江"]
    env = {"ECOMHUB_WAREHOUSES__0__PROVINCES": "江苏,浙江"}
    with pytest.raises(ConfigError, match=r"ECOMHUB_WAREHOUSES__0__PROVINCES: .*as JSON"):
        load_settings(write(tmp_path), environ=env)


@pytest.mark.parametrize("which", ["config", "secret", "rate card"])
def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, which: str) -> None:
    gbk = 'app_secret = "密钥"\n'.encode("gbk")
    path = write(tmp_path)
    if which == "config":
        path.write_bytes(GOOD.encode() + gbk)
    elif which == "secret":
        (tmp_path / "secret.txt").write_bytes("密钥".encode("gbk"))
        env = {"ECOMHUB_SHOPS__0__APP_SECRET_FILE": str(tmp_path / "secret.txt")}
    else:
        (tmp_path / "rates" / "sf.csv").write_bytes(RATES.encode() + "江苏,1,8,1,2\n".encode("gbk"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, environ=env if which == "secret" else {})


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path)
    settings = load_settings(environ={"ECOMHUB_CONFIG": str(path)})
    assert settings.config_path == path.resolve()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.replace('app_key = "12345678"\n', ""), "shops[0].app_key: required field"),
        (lambda s: s.replace("port = 8781", 'port = "many"'), "server.port: Input should be"),
        (lambda s: s.replace('platform = "jd"', 'platform = "pdd"'), "shops[1].platform"),
        (
            lambda s: s.replace('code = "jd-store"', 'code = "tmall-flagship"'),
            "shops[1].code: duplicate",
        ),
        (
            lambda s: s.replace('poll_interval = "30s"', 'poll_interval = "soon"'),
            "shops[0].poll_interval: not a duration",
        ),
        (
            lambda s: s.replace("rates/sf.csv", "rates/missing.csv"),
            "carriers[0].rate_card: cannot read rate card",
        ),
        (
            lambda s: s.replace('default_carrier = "SF"', 'default_carrier = "ZTO"'),
            "warehouses[0].default_carrier",
        ),
        (lambda s: s + "\nfoo = 1\n", "foo: unknown field"),
        (lambda s: s.replace("[server]", "[server"), "not valid TOML"),
    ],
    ids=[
        "missing",
        "wrong-type",
        "unknown-platform",
        "duplicate-shop",
        "bad-duration",
        "unreadable-rate-card",
        "unknown-carrier",
        "unknown-field",
        "bad-toml",
    ],
)
def test_bad_config_names_field_and_file(tmp_path: Path, edit, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    message = str(caught.value)
    assert expected in message
    assert str(path) in message
    for secret in ("top-secret-value", "session-token-value", "wms-secret-value"):
        assert secret not in message


def test_bad_rate_card_content(tmp_path: Path) -> None:
    path = write(tmp_path, rates="province,fee\n浙江,8\n")
    with pytest.raises(ConfigError, match=r"carriers\[0\].rate_card: .*lacks columns"):
        load_settings(path, environ={})
    path = write(tmp_path, rates=RATES + "江苏,one,8,1,2\n")
    with pytest.raises(ConfigError, match="line 4 is not a valid rate row"):
        load_settings(path, environ={})


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"environment variable ECOMHUB_SERVER__PORT: server\.port"
    ):
        load_settings(write(tmp_path), environ={"ECOMHUB_SERVER__PORT": "x"})
    with pytest.raises(ConfigError, match="ECOMHUB_SHOPS__NOPE__APP_KEY: no entry with code"):
        load_settings(write(tmp_path), environ={"ECOMHUB_SHOPS__NOPE__APP_KEY": "x"})


def test_secrets_never_in_repr_or_dump(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path), environ={})
    text = repr(settings) + str(settings) + settings.model_dump_json()
    for secret in settings.secret_values():
        assert secret not in text
    assert "top-secret-value" in settings.secret_values()
    assert "session-token-value" in settings.secret_values()


def test_durations() -> None:
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_duration("1d") == timedelta(days=1)
    assert parse_duration(90) == timedelta(seconds=90)
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("1 week")


@pytest.mark.parametrize("command", [["status"], ["db", "upgrade"], ["orders", "held"]])
def test_cli_exits_2_without_traceback(tmp_path: Path, command: list[str]) -> None:
    path = write(tmp_path, GOOD.replace('platform = "jd"', 'platform = "pdd"'))
    proc = subprocess.run(
        [sys.executable, str(MAIN), "--config", str(path), *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "shops[1].platform" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "top-secret-value" not in proc.stderr + proc.stdout


def test_redactor_removes_values_and_secret_fields() -> None:
    redactor = Redactor(["top-secret-value"])
    event = redactor(
        None,
        "info",
        {
            "event": "calling https://x/router?app_key=k&sign=ABCDEF0123&session=s1 with top-secret-value",
            "access_token": "abc",
            "app_key": "visible",
            "nested": {"app_secret": "x", "list": ["top-secret-value"]},
        },
    )
    assert "top-secret-value" not in str(event)
    assert "ABCDEF0123" not in event["event"] and "session=s1" not in event["event"]
    assert event["access_token"] == "**redacted**"
    assert event["app_key"] == "visible"
    assert event["nested"]["app_secret"] == "**redacted**"


def test_example_config_is_valid(tmp_path: Path) -> None:
    """deploy/ecomhub.example.toml loads once its secret files exist."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "ecomhub.example.toml"
    text = example.read_text(encoding="utf-8").replace("/etc/ecomhub/", f"{tmp_path}/")
    for name in (
        "admin_token",
        "tmall-flagship.secret",
        "tmall-flagship.session",
        "jd-store.secret",
        "jd-store.token",
        "wh-east.secret",
    ):
        (tmp_path / name).write_text(f"value-of-{name}")
    (tmp_path / "rates").mkdir()
    (tmp_path / "rates" / "sf.csv").write_text(RATES, encoding="utf-8")
    path = tmp_path / "ecomhub.toml"
    path.write_text(text, encoding="utf-8")
    settings = load_settings(path, environ={})
    assert [s.code for s in settings.shops] == ["tmall-flagship", "jd-store"]
    assert settings.shops[0].app_secret.get_secret_value() == "value-of-tmall-flagship.secret"
