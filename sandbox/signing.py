"""Signature rules of the simulated systems, written independently of `connectors/`.

The sandbox checks what the hub sends with its own implementation of each rule, so a signing bug in
a connector shows up as the platform's own invalid-signature error rather than passing silently.

- TOP / JD (`platforms.md` §1.1, §2.1): sorted `k+v` of every non-empty parameter except `sign`;
  md5 = HEX_UPPER(MD5(secret + s + secret)); hmac = HEX_UPPER(HMAC_MD5(secret, s));
  hmac-sha256 = HEX_UPPER(HMAC_SHA256(secret, s)).
- Qimen (§4.1): md5 over secret + sorted query pairs + raw body + secret.
- Kuaidi100 (§5.1): push `sign = UPPER(MD5(param + salt))`; query `UPPER(MD5(param + key + customer))`.
"""

import hashlib
import hmac
from collections.abc import Mapping

TOP_SIGN_METHODS = ("md5", "hmac", "hmac-sha256")


def _canonical(params: Mapping[str, str]) -> str:
    return "".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "sign" and k and v != "")


def top_sign(params: Mapping[str, str], secret: str, method: str = "md5", body: str = "") -> str:
    """Sign like TOP: `body` is only for Qimen / batch calls (appended after the sorted pairs)."""
    s = _canonical(params) + body
    if method == "md5":
        return hashlib.md5((secret + s + secret).encode("utf-8")).hexdigest().upper()
    if method == "hmac":
        return hmac.new(secret.encode(), s.encode("utf-8"), hashlib.md5).hexdigest().upper()
    if method == "hmac-sha256":
        return hmac.new(secret.encode(), s.encode("utf-8"), hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unknown sign_method {method!r}")


def qimen_sign(query: Mapping[str, str], body: str, secret: str) -> str:
    return top_sign(query, secret, "md5", body)


def kuaidi100_push_sign(param: str, salt: str) -> str:
    return hashlib.md5((param + salt).encode("utf-8")).hexdigest().upper()


def kuaidi100_query_sign(param: str, key: str, customer: str) -> str:
    return hashlib.md5((param + key + customer).encode("utf-8")).hexdigest().upper()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
