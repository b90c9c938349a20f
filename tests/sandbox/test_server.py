"""The sandbox server: lifecycle, credentials, the rendered hub config, wiring, live orders, CLI."""

import asyncio
from pathlib import Path

import httpx
import pytest

from config.loader import load_settings
from sandbox.cli import serve
from sandbox.server import Sandbox
from sandbox.signing import qimen_sign
from sandbox.world import cst_text
from tests.sandbox.conftest import now_cst


async def test_start_binds_a_free_port_and_stop_releases_it() -> None:
    sandbox = Sandbox(seed=1, backlog=10)
    with pytest.raises(RuntimeError):
        _ = sandbox.base_url  # unknown before start
    await sandbox.start()
    try:
        assert sandbox.port > 0
        assert sandbox.base_url == f"http://127.0.0.1:{sandbox.port}"
        async with httpx.AsyncClient() as http:
            assert (await http.get(sandbox.base_url + "/_sandbox/state")).status_code == 200
    finally:
        await sandbox.stop()
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{sandbox.port}/_sandbox/state")


async def test_credentials_and_urls(sandbox: Sandbox) -> None:
    shops = {s.code: s for s in sandbox.shops}
    assert set(shops) == {"tmall-flagship", "jd-flagship"}
    assert shops["tmall-flagship"].api_url == sandbox.base_url + "/router/rest"
    assert shops["jd-flagship"].api_url == sandbox.base_url + "/routerjson"
    assert shops["tmall-flagship"].sign_method == "md5"
    warehouses = sandbox.warehouses
    assert [w.code for w in warehouses] == ["WH-EAST", "WH-NORTH"]
    assert all(w.api_url == sandbox.base_url + "/router/qimen/service" for w in warehouses)
    assert {c.code: c.jd_id for c in sandbox.carriers}["SF"] == 467
    assert {c.code: c.jd_id for c in sandbox.carriers}["ZTO"] == 1499
    assert sandbox.kuaidi100_info.api_url == sandbox.base_url


def test_credentials_are_deterministic_per_seed() -> None:
    a, b, c = Sandbox(seed=3, backlog=5), Sandbox(seed=3, backlog=5), Sandbox(seed=4, backlog=5)
    assert a.credentials == b.credentials != c.credentials
    assert a.warehouse_specs == b.warehouse_specs
    assert a.kuaidi100_key == b.kuaidi100_key


def test_more_shops_and_warehouses_on_request() -> None:
    sandbox = Sandbox(seed=1, backlog=20, tmall_shops=3, jd_shops=2, warehouses=4)
    codes = [c.code for c in sandbox.credentials]
    assert codes == ["tmall-flagship", "tmall-2", "tmall-3", "jd-flagship", "jd-2"]
    assert [c.sign_method for c in sandbox.credentials[:3]] == ["md5", "hmac", "hmac-sha256"]
    assert [w.code for w in sandbox.warehouse_specs] == ["WH-EAST", "WH-NORTH", "WH-SOUTH", "WH-4"]
    catalog = {code for code, *_ in sandbox.world.catalog()}
    assert all(set(w.stock) == catalog for w in sandbox.warehouse_specs)


async def test_hub_config_toml_loads_with_the_hubs_own_loader(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    path = tmp_path / "ecomhub.toml"
    path.write_text(
        sandbox.hub_config_toml("sqlite:///demo.db", "127.0.0.1", 8799), encoding="utf-8"
    )
    settings = load_settings(path, environ={})
    assert settings.database_url == "sqlite:///demo.db"
    assert settings.server.port == 8799
    assert settings.server.admin_token is not None
    tmall = settings.shop("tmall-flagship")
    assert str(tmall.api_url) == sandbox.shop("tmall-flagship").api_url
    assert tmall.app_secret.get_secret_value() == sandbox.shop("tmall-flagship").app_secret
    assert (
        settings.shop("jd-flagship").access_token.get_secret_value()
        == sandbox.shop("jd-flagship").access_token
    )
    east = settings.warehouse("WH-EAST")
    assert east.customer_id == sandbox.warehouses[0].customer_id and "浙江" in east.provinces
    assert settings.carrier("SF").jd_id == 467
    assert (
        settings.kuaidi100 is not None and settings.kuaidi100.customer == sandbox.kuaidi100_customer
    )


async def test_state_endpoint_reports_every_simulator(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient() as http:
        state = (await http.get(sandbox.base_url + "/_sandbox/state")).json()
    assert {"world", "top", "jd", "qimen", "kuaidi100", "profile"} <= set(state)
    assert sum(state["world"]["orders"]["tmall-flagship"].values()) == 40


async def test_qimen_and_kuaidi100_are_mounted_on_the_same_server(sandbox: Sandbox) -> None:
    wh = sandbox.warehouses[0]
    code = sandbox.world.catalog()[0][0]
    body = (
        f"<request><criteriaList><criteria><warehouseCode>{wh.code}</warehouseCode>"
        f"<ownerCode>{wh.customer_id}</ownerCode><itemCode>{code}</itemCode>"
        "</criteria></criteriaList></request>"
    )
    query = {
        "method": "taobao.qimen.inventory.query",
        "app_key": wh.app_key,
        "timestamp": cst_text(now_cst()),
        "v": "2.0",
        "format": "xml",
        "sign_method": "md5",
        "customerId": wh.customer_id,
    }
    query["sign"] = qimen_sign(query, body, wh.app_secret)
    async with httpx.AsyncClient() as http:
        response = await http.post(wh.api_url, params=query, content=body.encode())
        assert "<flag>success</flag>" in response.text
        assert f"<itemCode>{code}</itemCode>" in response.text
        poll = await http.post(sandbox.base_url + "/poll", data={"schema": "json", "param": "{}"})
        assert poll.status_code != 404


async def test_a_live_rate_keeps_orders_coming() -> None:
    async with Sandbox(seed=2, backlog=10, rate=50.0) as sandbox:
        before = len(sandbox.world.changes)
        await asyncio.sleep(0.4)
        assert len(sandbox.world.changes) > before + 3


async def test_hub_url_can_be_set_after_construction() -> None:
    sandbox = Sandbox(seed=2, backlog=5)
    sandbox.hub_url = "http://127.0.0.1:9"
    async with sandbox:
        assert sandbox.state()["hub_url"] == "http://127.0.0.1:9"


async def test_cli_serve_prints_the_config_and_stops_when_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    task = asyncio.create_task(
        serve(
            profile="calm",
            seed=5,
            rate=0,
            host="127.0.0.1",
            port=0,
            hub_port=8780,
            database_url="sqlite:///demo.db",
        )
    )
    out = ""
    for _ in range(100):
        await asyncio.sleep(0.02)
        out += capsys.readouterr().out
        if "[kuaidi100]" in out:
            break
    assert "/router/rest" in out and "[[shops]]" in out and "[[warehouses]]" in out
    assert not task.done()  # runs until told to stop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
