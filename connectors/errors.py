"""What can go wrong when the hub talks to another system, by what the caller must do about it.

    ConnectorError              safe message + structured context (platform, target, method, code)
    ├── TransientError          try again later (isp.* errors, HTTP 5xx, timeouts before sending)
    │   ├── RateLimited         wait `retry_after` seconds (TOP code 7 ban, JD limits, HTTP 429)
    │   └── AmbiguousError      the request may have reached the target (timeout or connection drop
    │                           after sending, 5xx on a write): ask before sending again
    ├── AuthError               credentials or token rejected: re-authorise; never retried
    ├── RejectedError           the target understood and said no (isv.*, Qimen flag=failure)
    └── BadPayload              the answer could not be read (not JSON/XML, wrong envelope)

Connectors raise only these; `sync/` catches only these, never an httpx exception. Messages never
contain secrets, tokens or signatures: they are built from codes and the target's own messages.
"""

from typing import Any


class ConnectorError(Exception):
    """A call to an external system failed."""

    def __init__(
        self,
        message: str,
        *,
        platform: str = "",
        target: str = "",
        method: str = "",
        code: str = "",
        sub_code: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.platform = platform
        self.target = target
        self.method = method
        self.code = code
        self.sub_code = sub_code
        self.retry_after = retry_after
        super().__init__(message)

    def context(self) -> dict[str, Any]:
        """Fields to bind into a log line."""
        found = {
            "platform": self.platform,
            "target": self.target,
            "method": self.method,
            "code": self.code,
            "sub_code": self.sub_code,
            "retry_after": self.retry_after,
        }
        return {k: v for k, v in found.items() if v not in ("", None)}

    def __str__(self) -> str:
        where = " ".join(p for p in (self.platform, self.target, self.method) if p)
        code = "/".join(p for p in (self.code, self.sub_code) if p)
        prefix = f"{where}: " if where else ""
        suffix = f" [{code}]" if code else ""
        return f"{prefix}{self.args[0]}{suffix}"


class TransientError(ConnectorError):
    """A temporary failure; the same call may succeed later."""


class RateLimited(TransientError):
    """The target asked the hub to slow down for `retry_after` seconds."""


class AmbiguousError(TransientError):
    """The request may or may not have taken effect at the target."""


class AuthError(ConnectorError):
    """Credentials, signature or token rejected. The shop/warehouse needs an operator."""


class RejectedError(ConnectorError):
    """The target refused the request for a business reason; sending it again will not help."""


class BadPayload(ConnectorError):
    """The target's answer could not be parsed into what its spec promises."""
