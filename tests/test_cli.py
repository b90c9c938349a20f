"""The CLI as an operator uses it: a subprocess per command against a real SQLite file."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MAIN = Path(__file__).resolve().parents[1] / "main.py"

CONFIG = """
database_url = "sqlite:///{db}"
[[shops]]
code = "tmall-flagship"
platform = "tmall"
api_url = "http://127.0.0.1:1/router/rest"
app_key = "12345678"
app_secret = "top-secret-value"
access_token = "session-token-value"
[[warehouses]]
code = "WH-EAST"
api_url = "http://127.0.0.1:1/router/qimen/service"
app_key = "wmskey"
app_secret = "wms-secret-value"
customer_id = "OWNER1"
default_carrier = "SF"
"""


def ecomhub(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAIN), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "ecomhub.toml"
    path.write_text(CONFIG.format(db=tmp_path / "data" / "hub.db"), encoding="utf-8")
    return path


def test_status_before_upgrade_says_what_to_do(config: Path) -> None:
    proc = ecomhub(config, "status")
    assert proc.returncode == 1
    assert "run `ecomhub db upgrade`" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_upgrade_status_catalog_export(config: Path, tmp_path: Path) -> None:
    assert ecomhub(config, "db", "upgrade").returncode == 0
    assert ecomhub(config, "db", "upgrade").returncode == 0  # idempotent

    status = ecomhub(config, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["shops"][0]["code"] == "tmall-flagship"
    assert report["shops"][0]["orders"] == 0
    assert report["warehouses"] == [{"code": "WH-EAST", "outbox_pending": 0, "dead_letters": 0}]
    assert "tmall-flagship" in ecomhub(config, "status").stdout

    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "\ufeffsku,name,barcode,weight_kg,bundle_of\n"
        "A,杯子,690001,0.35,\n"
        "B,盖子,,0.05,\n"
        "GIFT,礼盒,,,A*2;B\n"
        ",no sku,,1,\n"
        "C,bad weight,,heavy,\n",
        encoding="utf-8",
    )
    proc = ecomhub(config, "catalog", "import", str(catalog))
    assert proc.returncode == 0, proc.stderr
    assert "imported 3 master SKUs" in proc.stdout and "2 lines skipped" in proc.stdout
    assert "line 5: empty sku" in proc.stderr and "line 6" in proc.stderr

    mappings = tmp_path / "mappings.csv"
    mappings.write_text("shop,platform_sku,sku,qty\n,5000123,GIFT,1\n", encoding="utf-8")
    assert "1 mappings" in ecomhub(config, "catalog", "import", str(mappings)).stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("what,ever\n1,2\n")
    proc = ecomhub(config, "catalog", "import", str(bad))
    assert proc.returncode == 1 and "unknown header" in proc.stderr

    export = ecomhub(config, "orders", "export", "--format", "jsonl")
    assert export.returncode == 0 and export.stdout == ""
    assert "exported 0 orders" in export.stderr

    held = ecomhub(config, "orders", "held", "--format", "json")
    assert held.returncode == 0 and json.loads(held.stdout) == []
    release = ecomhub(config, "orders", "release", "tmall-flagship", "42")
    assert release.returncode == 1 and "is not held" in release.stderr


def test_sync_erp_without_an_erp_section_is_a_config_error(config: Path) -> None:
    proc = ecomhub(config, "sync", "erp")
    assert proc.returncode == 2
    assert "[erp]" in proc.stderr and "Traceback" not in proc.stderr


def test_run_refuses_a_database_behind_the_code(config: Path) -> None:
    proc = ecomhub(config, "run")
    assert proc.returncode == 1
    assert "ecomhub db upgrade" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_usage_exits_2(config: Path) -> None:
    assert ecomhub(config, "orders", "release").returncode == 2
    assert ecomhub(config, "no-such-command").returncode == 2
    assert ecomhub(config, "orders", "export", "--format", "csv").returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--format", "xml"],
        ["orders", "held", "--format", "bogus"],
        ["orders", "held", "--shop", "no-such-shop"],
        ["orders", "export", "--shop", "no-such-shop"],
        ["catalog", "import", "missing.csv"],
    ],
    ids=["status-format", "held-format", "held-shop", "export-shop", "catalog-file"],
)
def test_bad_usage_is_refused_not_answered_empty(config: Path, args: list[str]) -> None:
    proc = ecomhub(config, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_demo_accounts_for_every_order(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, str(MAIN), "demo", "--seconds", "6", "--backlog", "100"),
            *("--dir", str(tmp_path / "demo")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = next(line for line in proc.stdout.splitlines() if line.startswith("summary:"))
    on_platforms, in_hub = [int(w) for w in summary.replace(",", " ").split() if w.isdigit()][:2]
    assert on_platforms == in_hub > 100
    assert ", 0 missing" in summary and "(0 twice)" in summary
    numbers = [int(w) for w in summary.replace(",", " ").replace("(", " ").split() if w.isdigit()]
    routed, created, _twice, shipped, confirmed = numbers[3:8]
    # A delivery order cancelled (a live refund) before its create was sent never reaches the WMS.
    assert 0 < created <= routed and shipped <= created and confirmed <= shipped
    assert (tmp_path / "demo" / "ecomhub.toml").exists()


@pytest.mark.slow
def test_demo_without_seconds_runs_until_ctrl_c_then_sums_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(MAIN), "demo", "--backlog", "20", "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        time.sleep(8)
        assert proc.poll() is None, "the demo stopped by itself"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "summary:" in stdout and ", 0 missing" in stdout


def test_replay_sends_dead_letters_again_and_says_how_they_fared(
    config: Path, tmp_path: Path
) -> None:
    assert ecomhub(config, "db", "upgrade").returncode == 0
    script = f"""
import asyncio, sys
from datetime import timedelta
sys.path.insert(0, {str(MAIN.parent)!r})
from models.domain import OutboxMessage
from models.store import Store

async def main():
    store = Store.open("sqlite:///{tmp_path / "data" / "hub.db"}")
    async with store.transaction() as tx:
        await tx.enqueue([OutboxMessage(kind="wms.create", target="WH-EAST",
                                        idempotency_key="wms.create:gone", payload={{"code": "gone"}})])
        (claimed,) = await tx.claim_outbox("cli-test", 1, timedelta(minutes=1))
        await tx.retry_outbox(claimed.id, "cli-test", "refused", None, ambiguous=False)
    await store.close()

asyncio.run(main())
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert "gone" in ecomhub(config, "outbox", "dead").stdout
    proc = ecomhub(config, "outbox", "replay", "--all")
    assert proc.returncode == 0, proc.stderr
    # its delivery order does not exist: sent again, refused again
    assert "replayed 1 messages: 0 sent, 0 to retry, 1 dead again" in proc.stdout
    assert ecomhub(config, "outbox", "replay", "999").returncode == 1
