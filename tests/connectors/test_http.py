"""The shared transport: signing primitive and auth, error mapping, the one retry policy, logs."""

import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr
from structlog.testing import capture_logs

from connectors.errors import (
    AmbiguousError,
    AuthError,
    BadPayload,
    RateLimited,
    RejectedError,
    TransientError,
)
from connectors.http import Call, Fault, HttpTransport, RetryPolicy, fault_for_status
from connectors.top_family import ErrorRule, ErrorTable, TopSigner, raise_error, top_sign
from tests.connectors import APP_SECRET, NO_JITTER, NOW_CST_TEXT, TOKEN, Sleeps, clock, form_of

URL = "https://api.test.invalid/router"

# --- the signature primitive: known answers computed here by hand --------------------------

PARAMS = {
    "method": "taobao.trade.fullinfo.get",
    "app_key": "12345678",
    "session": "tok",
    "timestamp": "2026-11-20 10:00:00",
    "v": "2.0",
    "sign_method": "md5",
    "fields": "tid,status",
    "tid": "1234567890123",
    "empty": "",
    "sign": "OLD",
}
CANONICAL = (
    "app_key12345678fieldstid,statusmethodtaobao.trade.fullinfo.getsessiontok"
    "sign_methodmd5tid1234567890123timestamp2026-11-20 10:00:00v2.0"
)


def test_md5_known_answer() -> None:
    expected = hashlib.md5(f"secret{CANONICAL}secret".encode()).hexdigest().upper()
    assert top_sign(PARAMS, "secret", "md5") == expected


def test_hmac_md5_known_answer() -> None:
    expected = hmac.new(b"secret", CANONICAL.encode(), hashlib.md5).hexdigest().upper()
    assert top_sign(PARAMS, "secret", "hmac") == expected


def test_hmac_sha256_known_answer() -> None:
    expected = hmac.new(b"secret", CANONICAL.encode(), hashlib.sha256).hexdigest().upper()
    assert top_sign(PARAMS, "secret", "hmac-sha256") == expected


def test_body_is_appended_for_qimen() -> None:
    body = "<request><a>1</a></request>"
    expected = hashlib.md5(f"secret{CANONICAL}{body}secret".encode()).hexdigest().upper()
    assert top_sign(PARAMS, "secret", "md5", body) == expected


def test_utf8_values_are_signed_as_utf8() -> None:
    params = {"a": "浙江"}
    expected = hashlib.md5("sa浙江s".encode()).hexdigest().upper()
    assert top_sign(params, "s", "md5") == expected


def test_unknown_sign_method_is_refused() -> None:
    with pytest.raises(ValueError):
        top_sign(PARAMS, "secret", "sha1")


async def test_signer_adds_system_params_and_signs_the_body() -> None:
    signer = TopSigner(
        app_key="12345678",
        app_secret=SecretStr(APP_SECRET),
        token=SecretStr(TOKEN),
        token_param="session",
        sign_method="hmac",
        clock=clock(),
        fixed={"v": "2.0", "format": "json"},
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(auth=signer, transport=httpx.MockTransport(handler)) as client:
        await client.post(URL, content=b"method=m&tid=1", headers={"Content-Type": "x"})
    sent = form_of(seen[0])
    assert set(sent) == {
        "method", "tid", "app_key", "session", "timestamp", "v", "format", "sign_method", "sign",
    }  # fmt: skip
    assert sent["timestamp"] == NOW_CST_TEXT and sent["session"] == TOKEN
    unsigned = {k: v for k, v in sent.items() if k != "sign"}
    canonical = "".join(f"{k}{v}" for k, v in sorted(unsigned.items()))
    expected = hmac.new(APP_SECRET.encode(), canonical.encode(), hashlib.md5).hexdigest().upper()
    assert sent["sign"] == expected
    assert seen[0].headers["Content-Length"] == str(len(seen[0].content))
    assert APP_SECRET not in repr(signer) and TOKEN not in repr(signer)


# --- the transport -------------------------------------------------------------------------

TABLE = ErrorTable(
    rules=(
        ErrorRule(Fault.RATE_LIMITED, codes=frozenset({"7"})),
        ErrorRule(Fault.MAYBE_DONE, codes=frozenset({"15"})),
        ErrorRule(Fault.AUTH, codes=frozenset({"27"})),
    )
)


def parse(response: httpx.Response, call: Call) -> dict[str, Any]:
    body = response.json()
    if "error" in body:
        raise_error(call, TABLE, code=body["error"], message=body.get("msg", ""))
    return dict(body)


@pytest.fixture
async def router() -> AsyncIterator[respx.MockRouter]:
    async with respx.mock(assert_all_called=True, assert_all_mocked=True) as mock:
        yield mock


def transport(
    router: respx.MockRouter, sleeps: Sleeps, *, cap: float = 60, policy: RetryPolicy = NO_JITTER
) -> HttpTransport:
    return HttpTransport(
        platform="tmall",
        target="tmall-flagship",
        url=URL,
        policy=policy,
        wait_cap=cap,
        transport=httpx.MockTransport(router.async_handler),
        sleep=sleeps,
        secrets=(APP_SECRET, TOKEN),
    )


async def test_transient_is_retried_with_backoff_then_succeeds(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(
        side_effect=[
            httpx.Response(200, json={"error": "15"}),
            httpx.Response(502),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    sleeps = Sleeps()
    http = transport(router, sleeps)
    assert await http.post_form("m", {"a": "1"}, idempotent=True, parse=parse) == {"ok": 1}
    assert route.call_count == 3
    assert sleeps.waits == [1.0, 2.0]
    await http.aclose()


async def test_retries_stop_after_max_attempts(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(503))
    sleeps = Sleeps()
    http = transport(router, sleeps)
    with pytest.raises(TransientError) as info:
        await http.post_form("m", {}, idempotent=True, parse=parse)
    assert not isinstance(info.value, AmbiguousError)
    assert route.call_count == NO_JITTER.max_attempts
    assert sleeps.waits == [1.0, 2.0, 4.0]


async def test_retries_stop_at_the_total_wait_budget(router: respx.MockRouter) -> None:
    policy = RetryPolicy(max_attempts=50, base_delay=4, max_delay=8, max_total_wait=20, jitter=0)
    router.post(URL).mock(return_value=httpx.Response(500))
    sleeps = Sleeps()
    with pytest.raises(TransientError):
        await transport(router, sleeps, cap=10, policy=policy).post_form(
            "m", {}, idempotent=True, parse=parse
        )
    assert sleeps.waits == [4, 8, 8]  # a fourth wait would pass the 20 s budget
    assert sum(sleeps.waits) <= 20


async def test_ban_under_the_cap_is_waited(router: respx.MockRouter) -> None:
    router.post(URL).mock(
        side_effect=[
            httpx.Response(
                200, json={"error": "7", "msg": "This ban will last for 31 more seconds"}
            ),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    sleeps = Sleeps()
    await transport(router, sleeps).post_form("m", {}, idempotent=True, parse=parse)
    assert sleeps.waits == [31.0]


async def test_ban_over_the_cap_is_raised_without_waiting(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(
        return_value=httpx.Response(
            200, json={"error": "7", "msg": "This ban will last for 31062 more seconds"}
        )
    )
    sleeps = Sleeps()
    with pytest.raises(RateLimited) as info:
        await transport(router, sleeps).post_form("m", {}, idempotent=True, parse=parse)
    assert info.value.retry_after == 31062
    assert route.call_count == 1 and sleeps.waits == []


async def test_http_429_honours_retry_after(router: respx.MockRouter) -> None:
    router.post(URL).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    sleeps = Sleeps()
    await transport(router, sleeps).post_form("m", {}, idempotent=False, parse=parse)
    assert sleeps.waits == [7.0]


async def test_5xx_on_a_write_is_ambiguous_and_not_retried(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(502))
    sleeps = Sleeps()
    with pytest.raises(AmbiguousError) as info:
        await transport(router, sleeps).post_form("ship", {}, idempotent=False, parse=parse)
    assert route.call_count == 1 and sleeps.waits == []
    assert info.value.code == "http_502" and info.value.method == "ship"


async def test_connect_error_is_retried_even_for_a_write(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json={"ok": 1})]
    )
    sleeps = Sleeps()
    await transport(router, sleeps).post_form("ship", {}, idempotent=False, parse=parse)
    assert route.call_count == 2


async def test_connect_timeout_is_transient(router: respx.MockRouter) -> None:
    router.post(URL).mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(TransientError) as info:
        await transport(router, Sleeps()).post_form("ship", {}, idempotent=False, parse=parse)
    assert not isinstance(info.value, AmbiguousError)


async def test_read_timeout_on_a_write_is_ambiguous_and_not_retried(
    router: respx.MockRouter,
) -> None:
    route = router.post(URL).mock(side_effect=httpx.ReadTimeout("late"))
    sleeps = Sleeps()
    with pytest.raises(AmbiguousError):
        await transport(router, sleeps).post_form("ship", {}, idempotent=False, parse=parse)
    assert route.call_count == 1 and sleeps.waits == []


async def test_dropped_connection_on_a_read_is_retried(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(
        side_effect=[
            httpx.RemoteProtocolError("peer closed"),
            httpx.ReadTimeout("late"),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    await transport(router, Sleeps()).post_form("get", {}, idempotent=True, parse=parse)
    assert route.call_count == 3


async def test_auth_is_not_retried(router: respx.MockRouter) -> None:
    route = router.post(URL).mock(return_value=httpx.Response(200, json={"error": "27"}))
    with pytest.raises(AuthError):
        await transport(router, Sleeps()).post_form("m", {}, idempotent=True, parse=parse)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("status", "retry_after", "fault"),
    [
        (200, None, None),
        (429, None, Fault.RATE_LIMITED),
        (503, 5.0, Fault.RATE_LIMITED),
        (503, None, Fault.MAYBE_DONE),
        (500, None, Fault.MAYBE_DONE),
        (401, None, Fault.AUTH),
        (404, None, Fault.REJECTED),
    ],
)
def test_status_table(status: int, retry_after: float | None, fault: Fault | None) -> None:
    assert fault_for_status(status, retry_after) is fault


def test_error_classes_per_fault() -> None:
    read = Call("jd", "jd-shop", "get", idempotent=True)
    write = Call("jd", "jd-shop", "ship", idempotent=False)
    assert type(read.error(Fault.MAYBE_DONE, "x")) is TransientError
    assert type(write.error(Fault.MAYBE_DONE, "x")) is AmbiguousError
    assert type(write.error(Fault.TRANSIENT, "x")) is TransientError
    assert type(read.error(Fault.REJECTED, "x")) is RejectedError
    assert type(read.error(Fault.BAD_PAYLOAD, "x")) is BadPayload


def test_error_text_never_holds_a_secret_or_a_signature() -> None:
    call = Call("tmall", "shop", "m", idempotent=True, secrets=(APP_SECRET, TOKEN))
    sign = "0123456789ABCDEF0123456789ABCDEF"
    error = call.error(Fault.REJECTED, f"bad {APP_SECRET} {TOKEN} sign={sign}", code="25")
    assert APP_SECRET not in str(error) and TOKEN not in str(error) and sign not in str(error)
    assert "tmall shop m" in str(error) and "[25]" in str(error)


async def test_retry_log_has_context_and_no_secret(router: respx.MockRouter) -> None:
    router.post(URL).mock(
        side_effect=[
            httpx.Response(200, json={"error": "15", "msg": f"echo {APP_SECRET}"}),
            httpx.Response(200, json={"ok": 1}),
        ]
    )
    with capture_logs() as logs:
        await transport(router, Sleeps()).post_form(
            "m", {"session": TOKEN}, idempotent=True, parse=parse
        )
    [entry] = [e for e in logs if e["event"] == "connector.retry"]
    assert entry["platform"] == "tmall" and entry["shop"] == "tmall-flagship"
    assert entry["method"] == "m" and entry["attempt"] == 1 and entry["code"] == "15"
    assert APP_SECRET not in str(logs) and TOKEN not in str(logs)


async def test_a_query_in_the_configured_url_is_kept_beside_the_calls_own() -> None:
    """A WMS endpoint may carry a query of its own (`…/service?customerId=C1`); httpx would
    replace it with the call's parameters."""
    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"ok": 1})

    http = HttpTransport(
        platform="qimen",
        target="WH-EAST",
        url="http://127.0.0.1:1/router/qimen/service?customerId=C1",
        policy=NO_JITTER,
        wait_cap=1,
        transport=httpx.MockTransport(answer),
        sleep=Sleeps(),
    )
    body = b"<request/>"
    await http.post(
        "m", body, content_type="text/xml", params={"method": "m"}, idempotent=True, parse=parse
    )
    await http.aclose()
    assert dict(seen[0].params) == {"customerId": "C1", "method": "m"}
