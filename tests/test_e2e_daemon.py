"""`ecomhub run` as a subprocess against the sandbox: pulls on schedule, a signed webhook and the
WMS callbacks over real HTTP, admin triggers, SIGTERM drain with exit 0, and no secret in any log
line."""

import base64
import json
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest

from api.server import free_port
from config import load_settings
from connectors.webhooks import sign_webhook
from models.store import Store
from sandbox.server import Sandbox
from tests.e2e import (
    HubProcess,
    check_exactly_once,
    diagnose,
    everything_settled,
    poll,
    prepared_hub,
)

pytestmark = pytest.mark.slow


async def test_run_serves_schedules_drains_and_keeps_secrets(
    sqlite_url: str, tmp_path: Path
) -> None:
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    async with Sandbox(
        seed=8, profile="calm", rate=2.0, backlog=40, backlog_days=0.5, ship_delay=0.3
    ) as sb:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = await prepared_hub(sb, tmp_path, sqlite_url, port)
        settings = load_settings(config, environ={})
        hub = HubProcess(
            config,
            tmp_path / "hub.log",
            env={"ECOMHUB_SHOPS__TMALL_FLAGSHIP__WEBHOOK_SECRET": webhook_secret},
        )
        await hub.start()
        store = Store.open(sqlite_url)
        try:
            await hub.wait_ready(base)
            sb.hub_url = base

            async def pulled() -> bool:
                async with store.transaction() as tx:
                    return len([r for r in await tx.runs(limit=50) if r.job == "pull"]) >= 4

            assert await poll(pulled, 20), "the scheduled pulls did not run:\n" + hub.tail()

            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                # A signed webhook is a hint: the order is fetched at once.
                fresh = sb.world.create_order("tmall-flagship")
                body = json.dumps(
                    {
                        "type": "order.paid",
                        "timestamp": "2026-11-23T10:00:00+08:00",
                        "data": {"order_id": str(fresh.order_id)},
                    }
                ).encode()
                headers = sign_webhook(webhook_secret, "evt-1", int(time.time()), body)
                bad = {**headers, "webhook-signature": "v1,AAAA"}
                answer = await client.post("/webhooks/orders/tmall-flagship", content=body)
                assert answer.status_code == 401
                answer = await client.post(
                    "/webhooks/orders/tmall-flagship", content=body, headers=bad
                )
                assert answer.status_code == 401
                answer = await client.post(
                    "/webhooks/orders/tmall-flagship", content=body, headers=headers
                )
                assert answer.status_code == 202, answer.text
                again = await client.post(
                    "/webhooks/orders/tmall-flagship", content=body, headers=headers
                )
                assert again.json()["status"] == "duplicate"

                async def fetched() -> bool:
                    async with store.transaction() as tx:
                        return (
                            await tx.get_order("tmall-flagship", str(fresh.order_id))
                        ) is not None

                assert await poll(fetched, 10), "the hinted order never arrived"

                # Admin: refused without the token, obeyed with it.
                assert (await client.post("/admin/shops/jd-flagship/pull")).status_code == 401
                wrong = {"Authorization": "Bearer nope"}
                answer = await client.post("/admin/shops/jd-flagship/pull", headers=wrong)
                assert answer.status_code == 401
                admin = {"Authorization": f"Bearer {sb.admin_token}"}
                answer = await client.post("/admin/shops/jd-flagship/pull", headers=admin)
                assert answer.status_code == 202, answer.text
                runs = (await client.get("/admin/runs", headers=admin)).json()
                assert runs, "no runs listed"
                metrics = (await client.get("/metrics")).text
                assert "ecomhub_" in metrics
                assert (await client.get("/docs")).status_code == 200

            # The WMS ships and calls back; the waybills go back to the marketplaces.
            await sb.stop_live()
            assert await poll(lambda: everything_settled(store), 60), await diagnose(store, sb)
            await check_exactly_once(sb, store)

            hub.signal(signal.SIGTERM)
            assert await hub.wait(30) == 0, hub.tail()
            async with store.transaction() as tx:
                assert await tx.leases() == []
        finally:
            if hub.proc is not None and hub.proc.returncode is None:
                await hub.kill()
            await store.close()
    log = hub.log.read_text(encoding="utf-8")
    assert "daemon stopped" in log
    for secret in [*settings.secret_values(), webhook_secret, sb.admin_token]:
        assert secret not in log, "a secret appeared in the daemon's log"
