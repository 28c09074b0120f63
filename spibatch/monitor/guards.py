"""The monitor's two outer layers: which Host names it answers to, and a catch-all for the unexpected.

**Hosts** (DNS rebinding: a page on evil.example.com whose name is made to resolve to this machine
would otherwise read the runs through the user's own browser).  Starlette's ``TrustedHostMiddleware``
checks every request's ``Host`` against :func:`allowed_hosts`; a refused one (or an empty or
malformed one) gets 400 with a JSON body naming ``--allowed-host``.  The names:

- bound to a loopback address (127.0.0.1, ::1, localhost): that address and the loopback names
  ``127.0.0.1``, ``localhost``, ``[::1]``;
- bound to one other address or name: that one;
- bound to every interface (``0.0.0.0``, ``::``): the loopback names, and the names given with
  ``--allowed-host`` / ``SPIBATCH_MONITOR_ALLOWED_HOSTS``, which are then required
  (:func:`spibatch.monitor.launch.run_monitor` says so in one line); ``*`` accepts any Host;
- plus every ``--allowed-host`` name (``*.example.org`` matches its subdomains).

**Catch-all**: an exception no reader expected becomes a 500 with a one-line JSON body; it is
logged with its traceback once per (path, exception, message) -- a page polling every 2 s does not
fill the log -- and the server goes on serving.
"""

from __future__ import annotations

import ipaddress
import logging

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse

log = logging.getLogger("spibatch.monitor")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")
MAX_LOGGED = 1000          # distinct failures remembered (so each is logged once)
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def host_name(name: str) -> str:
    """``name`` as it appears in a Host header without the port: lower case, IPv6 literals in brackets."""
    name = name.strip().lower()
    try:
        if ipaddress.ip_address(name.strip("[]")).version == 6:
            return f"[{name.strip('[]')}]"
    except ValueError:
        pass
    return name


def canonical_host(host: str) -> str:
    """An IP literal in any spelling the socket layer takes (``0``, ``127.1``, ``0x7f.1``, ``::ffff:0.0.0.0``) as
    its canonical form, so that the every-interface rule and the Host names apply to the address really bound
    (``--host 0`` listened on every interface unguarded); a name is returned as given."""
    import socket

    bare = host.strip().strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        try:
            return socket.inet_ntoa(socket.inet_aton(bare)) if bare else host
        except OSError:
            return host
    return str(address.ipv4_mapped or address) if address.version == 6 else str(address)


def allowed_name(name: str) -> str:
    """An ``--allowed-host`` value as a Host header names it: a port dropped (browsers send it, the check strips
    it: ``myhost:8765`` never matched); a scheme, a path, a space or any other character a host name cannot hold
    refused (ValueError: the monitor started and answered nobody by that name)."""
    import re

    text = name.strip()
    if text == "*":
        return text
    bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?", text)
    bare = bracketed.group(1) if bracketed else text
    try:
        if ipaddress.ip_address(bare).version == 6:
            return f"[{bare}]"
    except ValueError:
        pass
    host, _, port = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if (port and not port.isdigit()) or not re.fullmatch(r"(\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?", host):
        raise ValueError(f"{name!r} is not a host name")
    return host.lower()


def is_loopback(host: str) -> bool:
    if host_name(host) == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in WILDCARDS


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Host names a monitor bound to ``bound`` answers to (see the module's docstring)."""
    names = [host_name(n) for n in extra if n.strip()]
    if is_loopback(bound) or is_wildcard(bound):
        names += list(LOOPBACK_NAMES)
    if not is_wildcard(bound):
        names.append(host_name(bound))
    return list(dict.fromkeys(names))


class HostCheck:
    """``TrustedHostMiddleware`` with ``allowed_hosts``; its refusal answered as JSON that names the fix."""

    def __init__(self, app, allowed_hosts):
        self.app = app
        self.allowed = list(allowed_hosts)
        self.trusted = TrustedHostMiddleware(self._passed, allowed_hosts=self.allowed, www_redirect=False)

    async def _passed(self, scope, receive, send):
        scope["spibatch.host_ok"] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.trusted.allow_any:
            await self.app(scope, receive, send)
            return

        async def checked_send(message):
            if scope.get("spibatch.host_ok"):
                await send(message)
            elif message["type"] == "http.response.start":   # the middleware's own plain-text 400
                await self.refuse(scope, receive, send)

        await self.trusted(scope, receive, checked_send)

    async def refuse(self, scope, receive, send):
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")[:100]
        message = (f"Host {host!r} is not a name this monitor answers to (it answers to "
                   f"{', '.join(self.allowed)}); start it with --allowed-host NAME to add one")
        await JSONResponse({"error": message}, status_code=400, headers=HEADERS)(scope, receive, send)


class CatchAll:
    """An unexpected exception in a request: a 500 with a one-line JSON body, logged once, serving goes on."""

    def __init__(self, app):
        self.app = app
        self.logged: set[tuple[str, str, str]] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            key = (scope.get("path", ""), type(exc).__name__, str(exc)[:200])
            if key not in self.logged:
                if len(self.logged) < MAX_LOGGED:
                    self.logged.add(key)
                log.error("spibatch monitor: %s %s failed (%s: %s); it answered 500", scope.get("method"),
                          scope.get("path"), type(exc).__name__, str(exc)[:200], exc_info=exc)
            if not started:
                await JSONResponse({"error": f"internal error ({type(exc).__name__}); the monitor's log has "
                                             f"the details"}, status_code=500, headers=HEADERS)(scope, receive, send)
