"""The service manager's side of the daemon: systemd `Type=notify` readiness and watchdog.

systemd passes `NOTIFY_SOCKET` (a datagram socket path; `@` means the abstract namespace) and,
with `WatchdogSec=`, `WATCHDOG_USEC`. Outside systemd both are absent and every call is a no-op,
so the daemon runs the same in a container or a terminal.
"""

import os
import socket

import structlog

log = structlog.get_logger("ecomhub.sync.lifecycle")


class SystemdNotifier:
    """Sends `READY=1`, `STOPPING=1`, `STATUS=…` and `WATCHDOG=1` to systemd when run under it."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_seconds = int(usec) / 1_000_000 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *states: str) -> bool:
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall("\n".join(states).encode())
        except OSError as exc:
            log.warning("cannot notify systemd", socket=self.address, error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")
