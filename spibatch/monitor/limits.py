"""How much time and room the monitor's HTTP server gives a client: uvicorn's settings, and a request timeout.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``), the size of a request's line
and headers (``h11_max_incomplete_event_size``) and the connections + requests in flight
(``limit_concurrency``: beyond it, 503), but not the time a client takes to send a request: a
connection that sends nothing, or one header byte a second, is held for ever (its keep-alive timer
only starts after a response, and any byte received cancels it); and h11's size bound holds only for
headers that arrive in pieces.  :func:`protocol` is uvicorn's h11 protocol with both bounds added: a
timer starts when a connection is made and when the first byte of a request arrives on a kept-alive
one, and stops when the whole request (line, headers, body) has arrived; if it fires first, the
server writes ``408 Request Timeout`` and closes the connection.  More than MAX_HEADER_BYTES before
a request's headers end: ``431`` and the connection is closed.
The h11 implementation is chosen explicitly (never httptools, even where installed) so that this
bound always holds; the monitor's requests are few and small.
"""

from __future__ import annotations

REQUEST_TIMEOUT_S = 10.0    # a new connection's, or a request's first byte, to the end of that request
KEEP_ALIVE_S = 5            # an idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive)
MAX_CONCURRENCY = 100       # connections, and requests in flight; beyond: 503 (uvicorn's limit_concurrency)
MAX_HEADER_BYTES = 16 << 10     # a request's line + headers; more: 400 (h11_max_incomplete_event_size)
BACKLOG = 128               # connections waiting to be accepted (the listening socket's backlog)
SHUTDOWN_S = 5              # Ctrl-C / SIGTERM: requests in flight get this long to finish
TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
TOO_LARGE_RESPONSE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def protocol(timeout_s: float = REQUEST_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES):
    """uvicorn's H11Protocol, closing a connection whose request does not arrive within ``timeout_s``
    or whose request line and headers exceed ``max_header_bytes``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    receiving = (h11.IDLE, h11.SEND_BODY)   # the client's states while a request is still on its way

    class RequestTimeoutH11Protocol(H11Protocol):
        request_timeout_s = timeout_s

        def connection_made(self, transport) -> None:
            self._request_timer, self._header_bytes = None, 0
            super().connection_made(transport)
            self._arm()                       # a connection that never sends a byte is closed too

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state in receiving:
                self._arm()                   # no-op when running: the bound counts from the first byte
            if self.conn.their_state is h11.IDLE:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self._disarm()
                    self.transport.write(TOO_LARGE_RESPONSE)
                    self.transport.close()
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._header_bytes = 0
            if self.conn.their_state not in receiving:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._request_timer is None and not self.transport.is_closing():
                self._request_timer = self.loop.call_later(self.request_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._request_timer is not None:
                self._request_timer.cancel()
                self._request_timer = None

        def _too_slow(self) -> None:
            self._request_timer = None
            if self.conn.their_state in receiving and not self.transport.is_closing():
                if self.conn.their_state is h11.IDLE:   # no request yet, so no response written for it
                    self.transport.write(TIMEOUT_RESPONSE)
                self.transport.close()

    return RequestTimeoutH11Protocol


def uvicorn_settings() -> dict:
    """Keyword arguments of ``uvicorn.Config`` that bound what a client can hold."""
    return {"http": protocol(), "ws": "none", "timeout_keep_alive": KEEP_ALIVE_S,
            "limit_concurrency": MAX_CONCURRENCY, "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
            "backlog": BACKLOG, "timeout_graceful_shutdown": SHUTDOWN_S, "server_header": False}
