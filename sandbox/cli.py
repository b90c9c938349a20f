"""`ecomhub sandbox`: run every simulator until interrupted and print how to point a hub at them."""

import asyncio
import contextlib
import signal

from sandbox.server import Sandbox


def describe(sandbox: Sandbox) -> str:
    """URLs and credentials of a started sandbox, for a terminal."""
    lines = [f"ecomhub sandbox on {sandbox.base_url}  (seed {sandbox.seed})", "", "shops:"]
    for shop in sandbox.shops:
        lines.append(
            f"  {shop.code:<16} {shop.platform:<6} {shop.api_url}  app_key={shop.app_key} "
            f"app_secret={shop.app_secret} access_token={shop.access_token} "
            f"sign_method={shop.sign_method}"
        )
    lines += ["", "warehouses (Qimen):"]
    for wh in sandbox.warehouses:
        lines.append(
            f"  {wh.code:<16} {wh.api_url}  app_key={wh.app_key} app_secret={wh.app_secret} "
            f"customerId={wh.customer_id} default_carrier={wh.default_carrier}"
        )
    k100 = sandbox.kuaidi100_info
    lines += [
        "",
        f"kuaidi100: {k100.api_url}/poll  customer={k100.customer} key={k100.key}",
        f"k3cloud:   {sandbox.erp_info.api_url}  acct_id={sandbox.erp_info.acct_id} "
        f"username={sandbox.erp_info.username} app_id={sandbox.erp_info.app_id} "
        f"app_secret={sandbox.erp_info.app_secret} org={sandbox.erp_info.org_number} "
        f"({len(sandbox.k3cloud.purchase_orders)} purchase orders)",
        f"state:     {sandbox.base_url}/_sandbox/state",
        f"callbacks go to: {sandbox.hub_url}",
    ]
    return "\n".join(lines)


async def serve(
    *,
    profile: str,
    seed: int,
    rate: float,
    host: str,
    port: int,
    hub_port: int,
    database_url: str,
) -> None:
    """Start the sandbox, print its URLs, credentials and a ready ecomhub.toml, run until
    SIGINT/SIGTERM (or until the task is cancelled), then stop cleanly."""
    hub_host = "127.0.0.1"
    sandbox = Sandbox(
        seed=seed,
        profile=profile,
        rate=rate,
        host=host,
        port=port,
        hub_url=f"http://{hub_host}:{hub_port}",
    )
    async with sandbox:
        print(describe(sandbox))
        print("\n# --- ecomhub.toml " + "-" * 60)
        print(sandbox.hub_config_toml(database_url, hub_host, hub_port), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available off the main thread or on some platforms: then cancellation stops us.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
        try:
            await stop.wait()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
