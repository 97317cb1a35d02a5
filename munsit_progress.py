"""Follow a Munsit denoise job to its end over Server-Sent Events.

One file, no dependency beyond ``requests``; copy it into a project or
``pip install`` it.  Example::

    import munsit_progress

    done = munsit_progress.wait(denoise_id, on_progress=print, timeout=1800)
    print(done.url)

``wait()`` reconnects on dropped connections and returns the ``done`` event;
``iter_events()`` yields the validated events of a single connection;
``ProgressBar()`` is a ready ``on_progress`` display for a terminal, a log or
a notebook; ``download()`` saves the result.  Every error raised is a
:class:`MunsitError`.  From a shell: ``python munsit_progress.py --help``
(``--demo`` follows a simulated job, no key needed).
"""

import sys

if sys.version_info < (3, 7):  # noqa: UP036 (a copied file may meet an old Python)
    _TOO_OLD = "munsit_progress needs Python 3.7 or newer (this is %d.%d)" % sys.version_info[:2]
    if __name__ == "__main__":
        sys.exit(_TOO_OLD)
    raise ImportError(_TOO_OLD)

import codecs
import contextlib
import errno
import http.client
import importlib
import json
import logging
import math
import os
import random
import re
import shutil
import socket
import stat as _stat
import threading
import time
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    Generator,
    Iterator,
    List,
    Mapping,
    Optional,
    Set,
    TextIO,
    Tuple,
    Union,
    cast,
)
from urllib.parse import urljoin

import requests
import urllib3

if TYPE_CHECKING:  # the CLI imports argparse only when it runs
    import argparse

__version__ = "0.2.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_DOWNLOAD",
    "DEFAULT_READ_TIMEOUT",
    "DenoiseFailedError",
    "DoneEvent",
    "EXIT_BROKEN_PIPE",
    "EXIT_GAVE_UP",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_REJECTED",
    "EXIT_USAGE",
    "ErrorEvent",
    "Event",
    "JobNotFoundError",
    "MAX_LINE_BYTES",
    "MunsitError",
    "ProcessingEvent",
    "ProgressBar",
    "ProtocolError",
    "RetryPolicy",
    "TransportError",
    "WaitTimeoutError",
    "demo_server",
    "download",
    "iter_events",
    "main",
    "wait",
]

DEFAULT_BASE_URL = "https://api.munsit.com/api/v1"

#: Seconds to wait for the TCP (and TLS) connection to be set up.
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Seconds of silence (not a byte received) after which a connection counts as
#: stalled.  A denoise job can go minutes between progress events, and the
#: server itself hangs up after 15 minutes of inactivity; five minutes catches
#: a dead network path without giving up on a slow but healthy job.
DEFAULT_READ_TIMEOUT = 300.0

#: The longest line, and the largest event, the client accepts (1 MiB).
MAX_LINE_BYTES = 1024 * 1024

_API_KEY_ENV = "MUNSIT_API_KEY"
_BASE_URL_ENV = "MUNSIT_BASE_URL"
_READ_SIZE = 64 * 1024
_MAX_REDIRECTS = 5
_ERROR_BODY_LIMIT = 64 * 1024
_USER_AGENT = "munsit-progress/%s" % __version__
_MAX_RETRY_MS = 86400 * 1000
# Longer than any sleep or timer should be; threading and time.sleep refuse
# values past about 9e9 seconds.
_MAX_SLEEP = 86400.0 * 365
_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_BOM = codecs.BOM_UTF8
_LINE_END = re.compile("\r\n|\r|\n")
_BYTE_LINE_END = re.compile(b"\r\n|\r|\n")

logger = logging.getLogger("munsit_progress")


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessingEvent:
    """Work advanced: ``pct`` is the completion percentage, 0 to 100 inclusive.

    ``pct`` is the number as sent (an ``int`` or a ``float``); ``message`` is a
    human-readable note, or ``None`` when the server sent none.
    """

    stage: ClassVar[str] = "processing"
    pct: float
    message: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The event as the server sent it (a JSON-ready dict)."""
        out = {"stage": self.stage, "pct": self.pct}  # type: Dict[str, Any]
        if self.message is not None:
            out["message"] = self.message
        return out


@dataclass(frozen=True)
class DoneEvent:
    """The job succeeded: ``url`` is where the denoised audio can be fetched."""

    stage: ClassVar[str] = "done"
    url: str
    denoise_id: str

    def to_dict(self) -> Dict[str, Any]:
        """The event as the server sent it (a JSON-ready dict)."""
        return {"stage": self.stage, "url": self.url, "denoiseId": self.denoise_id}


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed on the server; ``message`` says why."""

    stage: ClassVar[str] = "error"
    message: str

    def to_dict(self) -> Dict[str, Any]:
        """The event as the server sent it (a JSON-ready dict)."""
        return {"stage": self.stage, "message": self.message}


#: Any event the stream can yield; tell them apart by ``event.stage``.
Event = Union[ProcessingEvent, DoneEvent, ErrorEvent]


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


class MunsitError(Exception):
    """Base of every error this module raises."""


class ConfigurationError(MunsitError, ValueError):
    """A bad argument or setting (no API key, a denoise id that is not a UUID,
    a malformed base URL).  Raised before any request is sent."""


class APIError(MunsitError):
    """The API answered with an HTTP error status.

    ``status_code`` is the HTTP status; ``error_code`` and ``error_message``
    come from the JSON body when it had them (``errorCode``/``errorMessage``,
    or ``message``), else ``None``.  The API key is redacted from them.
    """

    def __init__(
        self,
        status_code: int,
        error_code: Optional[str] = None,
        error_message: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        error_code = None if error_code is None else _redact(error_code)
        error_message = None if error_message is None else _redact(error_message)
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message
        #: Seconds the server asked us to wait (``Retry-After``), if it did.
        self.retry_after = retry_after
        self._init_args = (status_code, error_code, error_message, retry_after)
        text = "HTTP %d" % status_code
        if error_code:
            text += " [%s]" % _clean(error_code, 80)
        if error_message:
            text += ": %s" % _clean(error_message)
        super().__init__(text)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), self._init_args)


class AuthenticationError(APIError):
    """HTTP 401 or 403: the API key is missing, wrong, or not allowed here."""


class JobNotFoundError(APIError):
    """HTTP 404: no denoise job has this id (for this API key)."""


class DenoiseFailedError(MunsitError):
    """Raised by :func:`wait` when the job ends with an ``error`` event."""

    def __init__(self, message: str) -> None:
        message = _redact(message)
        self.message = message
        super().__init__("denoise job failed: %s" % _clean(message))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.message,))


class ProtocolError(MunsitError):
    """The server sent something this client cannot accept: a Content-Type
    other than ``text/event-stream``, malformed JSON, an invalid event, or a
    line or event larger than :data:`MAX_LINE_BYTES`."""


class TransportError(MunsitError):
    """The connection failed, was reset, was cut short before the terminal
    event, or went silent for longer than the read timeout.  The underlying
    exception is kept as ``__cause__``."""


class WaitTimeoutError(MunsitError, TimeoutError):
    """:func:`wait`'s overall ``timeout`` passed before the job ended."""


# --------------------------------------------------------------------------
# Text from the server: redacted and made printable before it is shown.
# --------------------------------------------------------------------------

# Every secret this process has handed to the module (API keys, passwords in
# a base URL).  Servers echo what they were sent, so any text that came from
# one, or names a URL, has these removed before it reaches an exception, a
# log record or a display.  A bounded, process-wide list: a display does not
# know which call's key to look for.
_secrets = ()  # type: Tuple[str, ...]
_secrets_lock = threading.Lock()
_MIN_SECRET = 6  # shorter values ("demo") would mangle ordinary words
_REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?<=://)([^/@\s:]*):[^/@\s]*@")


def _remember_secret(value: str) -> None:
    global _secrets
    if len(value) < _MIN_SECRET or value in _secrets:
        return
    with _secrets_lock:
        _secrets = (value,) + _secrets[:31]


def _redact(text: str) -> str:
    """``text`` without any known secret or URL password."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1:" + _REDACTED + "@", text)
    return text


def _printable(text: str) -> str:
    """``text`` with control characters (newlines, escapes) made spaces and
    lone surrogates made U+FFFD, so that it can be written to any stream."""
    if text.isprintable():
        return text
    import unicodedata

    out = []
    for char in text:
        kind = unicodedata.category(char)
        out.append(" " if kind == "Cc" else "\ufffd" if kind == "Cs" else char)
    return "".join(out)


def _clean(text: str, limit: int = 200) -> str:
    """Server text, safe to put in a message: redacted, printable, short."""
    text = _printable(_redact(text))
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------
# SSE decoding: bytes in, messages out; knows nothing about HTTP.
# --------------------------------------------------------------------------


class _LineSplitter:
    """Split a byte stream into text lines ending in CRLF, LF or CR.

    ``requests.iter_lines`` is not used: it reports a spurious empty line when
    a CR ends one chunk and the LF starts the next (which would dispatch a
    half-built event), and it waits for 512 bytes before yielding anything.
    """

    __slots__ = ("_pending", "_pending_size", "_skip_lf", "_at_start", "_limit")

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._pending = []  # type: List[bytes]
        self._pending_size = 0
        self._skip_lf = False
        self._at_start = True
        self._limit = limit

    def feed(self, chunk: bytes) -> List[str]:
        """Return the lines completed by ``chunk``, without their endings."""
        if self._skip_lf and chunk:
            # The previous chunk ended in CR: an LF here is the rest of a CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._at_start:
            chunk = self._strip_bom(chunk)
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if not cut:
            if chunk:
                self._hold(chunk)
            return []
        if self._pending:
            head = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
            chunk = head + chunk
            cut += len(head)
        block = chunk[:cut]
        if cut < len(chunk):
            self._hold(chunk[cut:])
        elif block[-1:] == b"\r":
            self._skip_lf = True
        if cut > self._limit:
            # Only a block this long can hold a line over the cap.
            if max(map(len, _BYTE_LINE_END.split(block))) > self._limit:
                raise ProtocolError("a line is longer than %d bytes" % self._limit)
        # Decoding whole lines at once: UTF-8 never puts CR or LF inside a
        # character, and the spec replaces invalid sequences.
        text = block.decode("utf-8", "replace")
        lines = _LINE_END.split(text) if "\r" in text else text.split("\n")
        lines.pop()  # what follows the last line end
        return lines

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > self._limit:
            raise ProtocolError("a line is longer than %d bytes" % self._limit)

    def _strip_bom(self, chunk: bytes) -> bytes:
        head = b"".join(self._pending) + chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            # Not enough bytes yet to tell whether the stream starts with a BOM.
            self._pending = [head] if head else []
            self._pending_size = len(head)
            return b""
        self._at_start = False
        self._pending = []
        self._pending_size = 0
        if head.startswith(_BOM):
            head = head[len(_BOM) :]
        return head


# One dispatched SSE message: (event type, data, id).  A plain tuple: it is
# made once per event, and a class would cost a call each time.
_Message = Tuple[str, str, str]


class _SSEDecoder:
    """Interpret SSE lines as the WHATWG EventSource parser does.

    ``last_event_id`` and ``retry`` (milliseconds) persist across
    reconnections; the caller reads them to resume.
    """

    __slots__ = ("_data", "_data_size", "_event", "_id", "last_event_id", "retry", "_limit")

    def __init__(self, last_event_id: str = "", limit: int = MAX_LINE_BYTES) -> None:
        self._data = []  # type: List[str]
        self._data_size = 0
        self._event = ""
        self._id = last_event_id
        self.last_event_id = last_event_id
        self.retry = None  # type: Optional[int]
        self._limit = limit

    def feed(self, lines: List[str]) -> List[_Message]:
        """Take complete lines; return the messages they complete."""
        messages = []
        data = self._data
        size = self._data_size
        limit = self._limit
        for line in lines:
            if line[:5] == "data:":  # the usual line first, and inline, for speed
                value = line[6:] if line[5:6] == " " else line[5:]
                data.append(value)
                size += len(value) + 1
                if size > limit:
                    raise ProtocolError("an event is longer than %d characters" % limit)
            elif not line:
                # A blank line dispatches; without data there is nothing to send.
                self.last_event_id = self._id
                if data:
                    text = data[0] if len(data) == 1 else "\n".join(data)
                    messages.append((self._event or "message", text, self._id))
                    data = self._data = []
                    size = 0
                self._event = ""
            elif line[0] != ":":  # a colon first is a comment (a heartbeat)
                self._data_size = size
                self._field(line)
                size = self._data_size
        self._data_size = size
        return messages

    def _add_data(self, value: str) -> None:
        self._data.append(value)
        self._data_size += len(value) + 1
        if self._data_size > self._limit:
            raise ProtocolError("an event is longer than %d characters" % self._limit)

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._add_data(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                # Thousands of digits would not even convert; a day is plenty.
                self.retry = int(value) if len(value) <= 8 else _MAX_RETRY_MS


_json_decode = json.JSONDecoder().decode
# SSE event types whose data must be a Munsit JSON payload.
_JSON_EVENT_TYPES = frozenset(("message", "processing", "done", "error"))


def _decode_event(
    event_type: str, data: str, denoise_id: str, warned: Optional[Set[Any]] = None
) -> Optional[Event]:
    """Validate one message as a Munsit event; ``None`` for one to skip.

    ``warned`` holds the unknown stages already logged, so that a stream of
    them logs each kind once instead of flooding the log."""
    try:
        payload = _json_decode(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        if not data or data.isspace():
            return None  # an empty data field is a heartbeat, not JSON
        if event_type not in _JSON_EVENT_TYPES:
            # A named event of some other kind, not a Munsit payload.
            logger.debug("skipping non-JSON %r event", event_type)
            return None
        raise ProtocolError("event data is not JSON: %s" % _clean(data)) from None
    if not isinstance(payload, dict):
        raise ProtocolError("event data is not a JSON object: %s" % _clean(data))
    stage = payload.get("stage")
    if stage is None and event_type != "message":
        stage = event_type  # the SSE event type names the stage
    if stage == "processing":
        pct: Any = payload.get("pct")
        kind = type(pct)
        # bool is not int here; NaN and the infinities fail the range test.
        if (kind is not int and kind is not float) or not 0 <= pct <= 100:
            raise ProtocolError("processing event has an invalid pct: %s" % _clean(data))
        text = payload.get("message")
        if text is not None and not isinstance(text, str):
            raise ProtocolError("processing event has a non-string message: %s" % _clean(data))
        return ProcessingEvent(pct, text)
    if stage == "done":
        url = payload.get("url")
        done_id = payload.get("denoiseId")
        if not isinstance(url, str) or not url:
            raise ProtocolError("done event has no url: %s" % _clean(data))
        if not isinstance(done_id, str) or _canonical_uuid(done_id) != denoise_id:
            raise ProtocolError(
                "done event is for another job (expected %s): %s" % (denoise_id, _clean(data))
            )
        return DoneEvent(url, done_id)
    if stage == "error":
        text = payload.get("message")
        if not isinstance(text, str):
            raise ProtocolError("error event has no message: %s" % _clean(data))
        return ErrorEvent(text)
    _warn_unknown_stage(stage, warned)
    return None


_MAX_WARNED_STAGES = 8


def _warn_unknown_stage(stage: Any, warned: Optional[Set[Any]]) -> None:
    key = stage if isinstance(stage, (str, int, float, bool, type(None))) else repr(stage)
    if warned is not None:
        if key in warned or len(warned) > _MAX_WARNED_STAGES:
            return
        warned.add(key)
        if len(warned) > _MAX_WARNED_STAGES:
            logger.warning("more events of unknown stages: no longer logged")
            return
    logger.warning("skipping events of unknown stage %s", _clean(repr(stage), 80))


# 32 hex digits, hyphens optional (the uuid module costs an import of its own).
_UUID = re.compile(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")


def _canonical_uuid(value: str) -> Optional[str]:
    """The lower-case, hyphenated form of a UUID, or None if it is not one."""
    if not isinstance(value, str) or _UUID.fullmatch(value) is None:
        return None
    digits = value.replace("-", "").lower()
    return "%s-%s-%s-%s-%s" % (digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:])


def _random_uuid() -> str:
    import uuid  # only the demo makes ids

    return str(uuid.uuid4())


# --------------------------------------------------------------------------
# Transport: one request path for every endpoint.
# --------------------------------------------------------------------------


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    """(scheme, host, port) of ``url``; ValueError for a malformed one.

    Parsed by urllib3, as the connection will be: urllib.parse reads
    "http://evil\\@api/" as host "api" where urllib3 connects to "evil".
    """
    if "\\" in url or any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("ambiguous URL")
    parts = urllib3.util.parse_url(url)
    scheme = (parts.scheme or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.host or "").lower(), port


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return "%s://%s:%s" % (scheme, host, port)


def _deadline(timeout: Optional[float], clock: Callable[[], float]) -> Optional[float]:
    """The clock reading at which ``timeout`` seconds from now run out."""
    if timeout is None or timeout == math.inf:
        return None
    if not isinstance(timeout, (int, float)) or not 0 <= timeout < math.inf:  # also NaN
        raise ConfigurationError("timeout must be a number of seconds >= 0, got %r" % (timeout,))
    return clock() + timeout


def _job_id(denoise_id: Any) -> str:
    """The canonical form of a denoise id; ConfigurationError if it is not one."""
    canonical = _canonical_uuid(denoise_id) if isinstance(denoise_id, str) else None
    if canonical is None:
        raise ConfigurationError("denoise_id must be a UUID, got %r" % (denoise_id,))
    return canonical


class _Watchdog:
    """One daemon thread that cuts connections whose time is up.

    Socket timeouts bound each receive, not their sum: a server that trickles
    a byte at a time, or sends "100 Continue" lines without end, would hold a
    call past any deadline.  A thread per connection would cost a thread per
    job in a batch; one thread and a heap cost one.  Started on first use,
    never at import, and again in a forked child.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap = []  # type: List[List[Any]]
        self._count = 0
        self._pid = -1

    def schedule(self, seconds: float, action: Callable[[], None]) -> List[Any]:
        """Run ``action`` in ``seconds``; the returned entry can be cancelled."""
        import heapq

        when = time.monotonic() + min(max(seconds, 0.0), _MAX_SLEEP)
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(target=self._run, name="munsit-watchdog", daemon=True).start()
            self._count += 1
            entry = [when, self._count, action]
            heapq.heappush(self._heap, entry)
            self._cond.notify()
        return entry

    @staticmethod
    def cancel(entry: Optional[List[Any]]) -> None:
        if entry is not None:
            entry[2] = None

    def _run(self) -> None:
        import heapq

        while True:
            with self._cond:
                while True:
                    heap = self._heap
                    while heap and heap[0][2] is None:
                        heapq.heappop(heap)
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        entry = heapq.heappop(heap)
                        action, entry[2] = entry[2], None
                        break
                    self._cond.wait(min(heap[0][0] - now, 3600.0) if heap else 3600.0)
            try:
                action()
            except Exception:  # a cut that fails has nothing left to cut
                logger.debug("watchdog action failed", exc_info=True)


_watchdog = _Watchdog()
# The exchange under way on this thread, for the connection classes below.
_local = threading.local()


class _Exchange:
    """One request and its response on one connection, and its time limit."""

    __slots__ = ("conn", "response", "expired", "_entry", "_closed", "_lock", "_reason")

    def __init__(self) -> None:
        self.conn = None  # type: Any
        self.response = None  # type: Optional[requests.Response]
        #: Why the watchdog cut the connection ("deadline" or "answer"), if it did.
        self.expired = None  # type: Optional[str]
        self._entry = None  # type: Optional[List[Any]]
        self._closed = False
        self._lock = threading.Lock()
        self._reason = ""

    def limit(self, seconds: Optional[float], reason: str) -> None:
        """Cut the connection ``seconds`` from now (None: no limit)."""
        _watchdog.cancel(self._entry)
        self._entry = None
        if seconds is not None:
            self._reason = reason
            self._entry = _watchdog.schedule(seconds, self._cut)

    def _cut(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = self._reason
            sock = _socket_of(self.response.raw) if self.response is not None else None
            if sock is None and self.conn is not None:
                sock = getattr(self.conn, "sock", None)
            if sock is None:
                # Still connecting (bounded by the connect timeout), or a
                # session of the caller's whose connection we cannot see
                # until the headers are in: look again shortly.
                self._entry = _watchdog.schedule(0.05, self._cut)
                return
            try:
                # socket.socket's own shutdown: an SSLSocket's would also
                # unwrap TLS under the reader's feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass  # closed already

    def close(self) -> None:
        with self._lock:
            self._closed = True
            _watchdog.cancel(self._entry)
            self._entry = None
        if self.response is not None:
            self.response.close()


def _close(response: requests.Response) -> None:
    """Close the response and stop its watchdog."""
    exchange = getattr(response, "_munsit_exchange", None)
    if exchange is not None:
        exchange.close()
    else:
        response.close()


def _socket_of(raw: Any) -> Optional[socket.socket]:
    """The socket under a urllib3 response, for the watchdog."""
    try:
        sock = raw._fp.fp.raw._sock
    except AttributeError:
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


class _Claim:
    """Mixed into urllib3's connection classes: tells the exchange on this
    thread which connection carries it, from before the connect to the last
    header, so that its watchdog can cut a response that never ends its
    headers."""

    def _claim(self) -> None:
        exchange = getattr(_local, "exchange", None)
        if exchange is not None:
            exchange.conn = self

    def connect(self) -> Any:
        self._claim()
        return super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self._claim()
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def request_chunked(self, *args: Any, **kwargs: Any) -> Any:  # urllib3 1.x
        self._claim()
        return super().request_chunked(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Claim, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Claim, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter on the connection classes above."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)  # type: ignore[no-untyped-call]
        if type(manager) is urllib3.ProxyManager:  # not SOCKS: its pools are its own
            setattr(manager, "pool_classes_by_scheme", _POOLS)  # noqa: B010 (untyped there)
        return manager


def _new_session(pool_size: int = 10) -> requests.Session:
    session = requests.Session()
    adapter = _Adapter(pool_connections=4, pool_maxsize=max(pool_size, 1))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _Client:
    """What one call works under, and the one path all its requests take.

    requests would forward the custom x-api-key header to any host a
    redirect names, so redirects are followed here, by hand, and the key is
    added to requests for the API's own origin only.  Every failure leaves
    as a :class:`MunsitError`, with the key redacted from its text and
    scrubbed from the request objects its cause keeps.
    """

    __slots__ = (
        "api_key",
        "base_url",
        "session",
        "connect_timeout",
        "read_timeout",
        "deadline",
        "clock",
        "allow_http",
        "_owned",
        "_api_origin",
    )

    def __init__(
        self,
        api_key: Optional[str],
        base_url: Optional[str],
        session: Optional[requests.Session],
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        deadline: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        require_key: bool = True,
        allow_http: bool = False,
        pool_size: int = 10,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(_API_KEY_ENV)
        # A key read from a file or an env var often ends in a newline.
        api_key = (api_key or "").strip()
        if not api_key and require_key:
            raise ConfigurationError(
                "no API key: pass api_key= or set the %s environment variable" % _API_KEY_ENV
            )
        if not all(" " <= c <= "~" for c in api_key):
            # requests would reject it with the key itself in the message.
            raise ConfigurationError("the API key contains characters not allowed in a header")
        _remember_secret(api_key)
        if base_url is None:
            base_url = os.environ.get(_BASE_URL_ENV) or DEFAULT_BASE_URL
        try:
            scheme, host, _ = _origin(base_url)
            auth = urllib3.util.parse_url(base_url).auth
        except ValueError:
            scheme = host = ""
            auth = None
        if auth and ":" in auth:
            _remember_secret(auth.split(":", 1)[1])
        if scheme not in ("http", "https") or not host:
            raise ConfigurationError(
                "base_url must be an http(s) URL, got %r" % (_clean(str(base_url), 100),)
            )
        for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigurationError("%s must be a positive number of seconds" % name)
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._api_origin = _origin(self.base_url)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.deadline = deadline
        self.clock = clock
        self.allow_http = allow_http
        self._owned = session is None
        self.session = _new_session(pool_size) if session is None else session

    def __repr__(self) -> str:
        return "<_Client %s>" % _redact(self.base_url)

    def close(self) -> None:
        """Close the session if this client made it."""
        if self._owned:
            self.session.close()

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - self.clock()

    def check_time(self, doing: str) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise WaitTimeoutError("the deadline passed %s" % doing)

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, Union[str, bytes]],
        *,
        body: Optional[Callable[[], Any]] = None,
        foreign: bool = False,
    ) -> requests.Response:
        """Send one request, following redirects by hand; return the final
        response, streaming and with its status unchecked.

        ``body`` makes a fresh request body for each hop.  ``foreign``: the
        URL may be on another origin (a download): the key goes only to
        ``url`` itself, and only if it is on the API's origin, never to a
        host a redirect names.  Otherwise a redirect to another origin
        raises.  POST follows only 307 and 308, which ask for the same
        request again.
        """
        self._check_url(url)
        for hop in range(_MAX_REDIRECTS + 1):
            self.check_time("before the request was sent")
            sent = dict(headers)
            on_api = _origin(url) == self._api_origin
            if self.api_key and on_api and (hop == 0 or not foreign):
                sent["x-api-key"] = self.api_key
            response = self._exchange(method, url, sent, body() if body is not None else None)
            status = response.status_code
            if status not in _REDIRECT_STATUSES or "Location" not in response.headers:
                return response
            _close(response)
            try:
                location = urljoin(url, response.headers["Location"])
                elsewhere = _origin(location) != self._api_origin
            except ValueError:
                raise ProtocolError("redirected to a malformed URL") from None
            if method != "GET" and status not in (307, 308):
                raise APIError(
                    status, error_message="the API redirected a %s; not followed" % method
                )
            if elsewhere and not foreign:
                raise APIError(
                    status,
                    error_message="redirected to another origin (%s); not followed, so that "
                    "the API key is not sent there" % _origin_text(location),
                )
            self._check_url(location)
            url = location
        raise APIError(status, error_message="more than %d redirects" % _MAX_REDIRECTS)

    def _check_url(self, url: str) -> None:
        try:
            scheme, host, _ = _origin(url)
        except ValueError:
            raise ProtocolError("malformed URL: %s" % _clean(url, 100)) from None
        if scheme not in ("http", "https") or not host:
            raise ProtocolError("not an http(s) URL: %s" % _clean(url, 100))
        if scheme == "http" and self._api_origin[0] == "https" and not self.allow_http:
            raise ProtocolError(
                "refusing plain http for %s while the API is https (allow_http=True allows it)"
                % _clean(url, 100)
            )

    def _exchange(
        self, method: str, url: str, headers: Dict[str, Union[str, bytes]], data: Any
    ) -> requests.Response:
        remaining = self.remaining()
        timeout = (
            _bounded(self.connect_timeout, remaining),
            _bounded(self.read_timeout, remaining),
        )
        exchange = _Exchange()
        # The whole answer, from connect to the last header, is bounded: by
        # the deadline, and by read_timeout when there is none.  An upload
        # is bounded by the deadline only until its last byte is handed over.
        answer = self.connect_timeout + self.read_timeout
        if data is None:
            _limit_answer(exchange, answer, self)
        else:
            exchange.limit(remaining, "deadline")
            data.on_end = lambda: _limit_answer(exchange, self.read_timeout, self)
        logger.debug("%s %s", method, _redact(url))
        _local.exchange = exchange
        try:
            response = self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                stream=True,
                timeout=timeout,
                allow_redirects=False,
            )
        except Exception as exc:
            exchange.close()
            failure = self._failure(exc, exchange, url, data)
            if failure is exc:
                raise
            raise failure from exc
        except BaseException:  # Ctrl-C: let it through, with the connection closed
            exchange.close()
            raise
        finally:
            _local.exchange = None
            if "x-api-key" in headers:
                headers["x-api-key"] = _REDACTED
        _scrub(response)
        exchange.response = response
        setattr(response, "_munsit_exchange", exchange)  # noqa: B010 (requests' class)
        with exchange._lock:
            expired = exchange.expired
        if expired is not None or (self.deadline is not None and self.clock() >= self.deadline):
            exchange.close()
            if expired == "answer":
                raise TransportError("no complete answer within %g seconds" % answer)
            raise WaitTimeoutError("the deadline passed while waiting for the answer")
        exchange.limit(self.remaining(), "deadline")
        return response

    def _failure(self, exc: Exception, exchange: _Exchange, url: str, data: Any) -> BaseException:
        """The MunsitError for a request that raised ``exc``."""
        if data is not None and data.callback_error is exc:
            return exc  # the caller's own callback raised: theirs, unchanged
        _scrub(exc)
        if exchange.expired == "deadline" or (
            self.deadline is not None and self.clock() >= self.deadline
        ):
            return WaitTimeoutError("the deadline passed while waiting for the answer")
        if exchange.expired == "answer":
            return TransportError(
                "no complete answer within %g seconds" % (self.connect_timeout + self.read_timeout)
            )
        return TransportError("cannot reach %s: %s" % (_origin_text(url), _clean(_reason(exc))))

    def error(self, response: requests.Response, for_job: bool = True) -> APIError:
        """The APIError for an error response, which it closes.

        A 404 means "no such job" only for the job's own endpoints."""
        status = response.status_code
        body = b""
        try:
            for piece in self.chunks(response):
                body += piece
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        except MunsitError:  # the body is a courtesy; the status says enough
            pass
        finally:
            _close(response)
        code = text = None
        payload = _json_or_none(body[:_ERROR_BODY_LIMIT])
        if isinstance(payload, dict):
            if isinstance(payload.get("errorCode"), (str, int)):
                code = str(payload["errorCode"])
            for key in ("errorMessage", "message", "error"):
                if isinstance(payload.get(key), str):
                    text = payload[key]
                    break
        if text is None:
            text = response.reason if isinstance(response.reason, str) and response.reason else None
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        cls = APIError
        if status in (401, 403):
            cls = AuthenticationError
        elif status == 404 and for_job:
            cls = JobNotFoundError
        return cls(status, code, text, retry_after)

    def chunks(self, response: requests.Response, decode: bool = True) -> Iterator[bytes]:
        """The body as it arrives (see _read_chunks)."""
        return _read_chunks(response, self.read_timeout, self.deadline, self.clock, decode)

    def read_json(self, response: requests.Response, limit: int, what: str) -> Any:
        """The whole JSON body of a 200 answer, at most ``limit`` bytes."""
        content_type = response.headers.get("Content-Type", "")
        body = bytearray()
        try:
            for piece in self.chunks(response):
                body += piece
                if len(body) > limit:
                    raise ProtocolError("%s is larger than %d bytes" % (what, limit))
        finally:
            _close(response)
        payload = _json_or_none(bytes(body))
        if payload is None and body.strip() != b"null":
            raise ProtocolError(
                "%s is not JSON (Content-Type %s): %s"
                % (
                    what,
                    _clean(content_type or "none", 60),
                    _clean(body[:200].decode("utf-8", "replace")),
                )
            )
        return payload


def _limit_answer(exchange: _Exchange, seconds: float, client: _Client) -> None:
    remaining = client.remaining()
    if remaining is not None and remaining <= seconds:
        exchange.limit(remaining, "deadline")
    else:
        exchange.limit(seconds, "answer")


def _bounded(timeout: float, remaining: Optional[float]) -> float:
    if remaining is None:
        return timeout
    return max(min(timeout, remaining), 0.001)


def _scrub(obj: Any) -> None:
    """Replace the API key in the request objects an exception or response
    keeps reachable (``exc.request.headers``, its causes'), where error
    trackers that capture them would find it."""
    seen = 0
    while obj is not None and seen < 8:
        seen += 1
        for holder in (obj, getattr(obj, "response", None)):
            request = getattr(holder, "request", None)
            headers = getattr(request, "headers", None)
            if headers is not None and "x-api-key" in headers:
                headers["x-api-key"] = _REDACTED
        obj = getattr(obj, "__cause__", None) or getattr(obj, "__context__", None)


def _json_or_none(body: bytes) -> Any:
    """``body`` decoded as JSON, or None if it is not."""
    try:
        return _json_decode(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None


def _reason(exc: BaseException) -> str:
    """The root of a requests error, without urllib3's wrapping.

    "HTTPConnectionPool(...): Max retries exceeded ... (Caused by ...)" names
    a retry count that is not ours; what the user needs is the innermost
    cause, such as "[Errno 111] Connection refused".
    """
    for _ in range(5):  # requests -> MaxRetryError -> NewConnectionError -> OSError
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    # urllib3 prefixes the connection: "<...HTTPConnection object at 0x..>: "
    # in 1.x, "HTTPConnection(host=..., port=...): " in 2.x.
    try:
        text = str(exc)
    except Exception:
        text = ""
    return re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", text) or type(exc).__name__


def _ascii_int(value: Optional[str], limit: int = 18) -> Optional[int]:
    """A header's non-negative integer, or None; only ASCII digits count."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > limit or not (value.isdigit() and value.isascii()):
        return None
    return int(value)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 12 else math.inf
    try:
        when = parsedate_to_datetime(value)
        if when is None:
            return None
        return max(when.timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _content_decoder(encoding: str) -> Optional[Any]:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return _GzipDecoder()
    if encoding == "deflate":
        return _DeflateDecoder()
    raise ProtocolError("unsupported Content-Encoding %r" % _clean(encoding, 40))


class _GzipDecoder:
    """gzip, every member: RFC 1952 allows several, one after another."""

    def __init__(self) -> None:
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._members = 0

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        obj = self._obj
        if obj.eof:
            if not data:
                return b""
            self._members += 1
            obj = self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            return obj.decompress(data, max_length)
        except zlib.error:
            if self._members:
                # Bytes after a complete member that are not one (padding):
                # ignored, as gzip readers and urllib3 do.
                self._obj = _Drain()  # type: ignore[assignment]
                return b""
            raise

    @property
    def unconsumed_tail(self) -> bytes:
        obj = self._obj
        return obj.unconsumed_tail or (obj.unused_data if obj.eof else b"")

    @property
    def eof(self) -> bool:
        return self._obj.eof


class _Drain:
    """Stands in for a decompressor once the rest of the body is ignored."""

    eof = True
    unconsumed_tail = b""
    unused_data = b""

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        return b""


class _DeflateDecoder:
    """'deflate' is zlib-wrapped by the RFC, but some servers send it raw."""

    def __init__(self) -> None:
        self._first = True
        self._obj = zlib.decompressobj()

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._obj.decompress(data, max_length)
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._obj.decompress(data, max_length)

    @property
    def unconsumed_tail(self) -> bytes:
        return self._obj.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._obj.eof


def _raw_chunks(response: requests.Response, decode: bool) -> Tuple[Callable[[], bytes], bool]:
    """A function returning the next bytes read (b"" at the end), and whether
    it already undoes the Content-Encoding."""
    raw = response.raw
    fp = getattr(raw, "_fp", None)
    if isinstance(fp, http.client.HTTPResponse):
        # http.client's read1 returns as soon as any body bytes are in, in
        # every framing (chunked, Content-Length, close-delimited).  urllib3's
        # read(amt) waits for amt bytes unless the body is chunked, and its
        # read1 exists only from urllib3 2.3.
        return lambda: fp.read1(_READ_SIZE), False
    if hasattr(raw, "read1"):
        return lambda: raw.read1(_READ_SIZE, decode_content=decode), decode
    stream = raw.stream(_READ_SIZE, decode_content=decode)
    return lambda: next(stream, b""), decode


def _read_chunks(
    response: requests.Response,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
    decode: bool = True,
) -> Iterator[bytes]:
    """Yield the body as it arrives, its Content-Encoding undone if
    ``decode``; raise TransportError on a stall, a reset or a truncated
    body, WaitTimeoutError at the deadline."""
    read, decoded = _raw_chunks(response, decode)
    decoder = None
    if decode and not decoded:
        decoder = _content_decoder(response.headers.get("Content-Encoding", ""))
    exchange = getattr(response, "_munsit_exchange", None)

    def past_deadline() -> bool:
        if exchange is not None and exchange.expired == "deadline":
            return True
        return deadline is not None and clock() >= deadline

    while True:
        if past_deadline():
            raise WaitTimeoutError("the deadline passed before the end")
        try:
            data = read()
        except (socket.timeout, urllib3.exceptions.ReadTimeoutError) as exc:
            if past_deadline():
                raise WaitTimeoutError("the deadline passed before the end") from exc
            raise TransportError(
                "no data for %g seconds: the connection stalled" % read_timeout
            ) from exc
        except Exception as exc:  # whatever a broken connection makes http.client raise
            _scrub(exc)
            if past_deadline():  # the watchdog cut it
                raise WaitTimeoutError("the deadline passed before the end") from exc
            if isinstance(exc, http.client.IncompleteRead):
                raise TransportError("the server cut the body short") from exc
            raise TransportError("the connection broke: %s" % _clean(_reason(exc))) from exc
        if not data:
            if past_deadline():  # the watchdog cut it
                raise WaitTimeoutError("the deadline passed before the end")
            if decoder is not None and not decoder.eof:
                # A close-delimited compressed body cut short looks like an end.
                raise TransportError("the compressed body was cut short")
            return
        if decoder is None:
            yield data
            continue
        try:
            while data:
                out = decoder.decompress(data, _READ_SIZE)
                if out:
                    yield out
                data = decoder.unconsumed_tail
        except zlib.error as exc:
            raise ProtocolError("the compressed body is corrupt: %s" % exc) from exc


class _Resume:
    """What one connection leaves for the next: the last event id, the
    server's ``retry:`` delay, the unknown stages already logged, and whether
    any connection was made."""

    __slots__ = ("last_event_id", "retry_ms", "warned", "connected")

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry_ms = None  # type: Optional[int]
        self.warned = set()  # type: Set[Any]
        self.connected = False


def _open(client: _Client, denoise_id: str, resume: _Resume) -> requests.Response:
    """Send the GET and return a 200 ``text/event-stream`` response."""
    headers: Dict[str, Union[str, bytes]] = {
        "Accept": "text/event-stream",
        "Cache-Control": "no-cache",
        # Only what _read_chunks can undo itself; never br or zstd.
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": _USER_AGENT,
    }
    last_id = resume.last_event_id.strip()
    if last_id:
        # Sent as UTF-8 bytes: requests would encode a str as Latin-1 (and fail
        # on Arabic), and refuses a value that starts with white space.
        headers["Last-Event-ID"] = last_id.encode("utf-8", "replace")
    response = client.send("GET", client.url("/denoise/%s/progress" % denoise_id), headers)
    if response.status_code != 200:
        raise client.error(response)
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "text/event-stream":
        _close(response)
        raise ProtocolError(
            "expected Content-Type text/event-stream, got %r (is a proxy in the way?)"
            % _clean(content_type or "nothing", 80)
        )
    return response


def _events(client: _Client, denoise_id: str, resume: _Resume) -> Generator[Event, None, None]:
    """The events of one connection; the response is closed on every exit."""
    response = _open(client, denoise_id, resume)
    resume.connected = True
    try:
        splitter = _LineSplitter()
        decoder = _SSEDecoder(resume.last_event_id)
        warned = resume.warned
        for chunk in client.chunks(response):
            lines = splitter.feed(chunk)
            if not lines:
                continue
            messages = decoder.feed(lines)
            resume.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                resume.retry_ms = decoder.retry
            for event_type, data, _ in messages:
                event = _decode_event(event_type, data, denoise_id, warned)
                if event is None:
                    continue
                if event.stage != "processing":
                    # Close before handing over the terminal event, so that a
                    # caller who keeps the generator does not keep the socket.
                    _close(response)
                    yield event
                    return
                yield event
        raise TransportError("the server closed the stream before the job's final event")
    finally:
        _close(response)


def _owned_events(client: _Client, denoise_id: str) -> Generator[Event, None, None]:
    """iter_events' generator: one connection, and the client closed after."""
    try:
        yield from _events(client, denoise_id, _Resume())
    finally:
        client.close()


def iter_events(
    denoise_id: str,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Iterator[Event]:
    """Yield the validated events of one connection to the job's progress stream.

    Events are :class:`ProcessingEvent`, then one terminal :class:`DoneEvent`
    or :class:`ErrorEvent` (an error event is yielded as data, not raised).
    After the terminal event the connection is closed and the iterator ends.
    It never reconnects: if the stream ends early, is reset, or is silent for
    ``read_timeout`` seconds, it raises :class:`TransportError`.  Use
    :func:`wait` to follow a job across reconnections.

    ``api_key`` defaults to ``$MUNSIT_API_KEY``; ``base_url`` to
    ``$MUNSIT_BASE_URL``, else :data:`DEFAULT_BASE_URL`.  A missing key or a
    ``denoise_id`` that is not a UUID raises :class:`ConfigurationError` here,
    before any request.  A given ``session`` is used and left open.

    Raises :class:`AuthenticationError`, :class:`JobNotFoundError`,
    :class:`APIError`, :class:`ProtocolError` or :class:`TransportError`.
    Closing the iterator early (``break``, ``.close()``) closes the
    connection.

    Example::

        for event in iter_events(denoise_id):
            print(event)
    """
    job = _job_id(denoise_id)
    client = _Client(
        api_key, base_url, session, connect_timeout=connect_timeout, read_timeout=read_timeout
    )
    return _owned_events(client, job)


# --------------------------------------------------------------------------
# Reconnect policy and wait()
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How :func:`wait` reconnects after a failure.

    The n-th consecutive failure waits a random time between 0 and
    ``min(backoff_max, base * 2 ** (n - 1))`` seconds ("full jitter"), where
    ``base`` is ``backoff_base``, or the server's ``retry:`` delay if that is
    longer.  When the server sent ``retry:``, the first reconnection waits
    exactly that long (at most ``backoff_max``).  A ``Retry-After`` header is obeyed as given, up to
    ``max_retry_after`` seconds; a longer one ends the wait.  When
    ``max_retries`` reconnections in a row have failed too (``max_retries``
    + 1 failures), the last error is raised.  A connection that brought an
    event not seen before resets the count.

    ``clock`` and ``sleep`` are there for tests to replace.
    """

    max_retries: int = 8
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    jitter: bool = True
    max_retry_after: float = 600.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def delay(
        self,
        failures: int,
        retry_after: Optional[float] = None,
        server_retry: Optional[float] = None,
    ) -> float:
        """Seconds to wait before the next attempt, after ``failures`` in a row."""
        if retry_after is not None:
            return retry_after
        if server_retry is not None and failures <= 1:
            # The server's own reconnection time, as EventSource uses it.
            return min(server_retry, self.backoff_max)
        base = self.backoff_base
        if server_retry is not None:
            base = max(base, server_retry)
        # The exponent is capped so that a long run of failures cannot overflow.
        ceiling = min(self.backoff_max, base * 2.0 ** min(max(failures - 1, 0), 64))
        return random.uniform(0, ceiling) if self.jitter else ceiling


def _is_retryable(exc: MunsitError) -> bool:
    if isinstance(exc, TransportError):
        # A certificate that fails verification will fail again.
        return not isinstance(exc.__cause__, requests.exceptions.SSLError)
    if isinstance(exc, APIError):
        return exc.status_code == 429 or 500 <= exc.status_code <= 599
    return False


def wait(
    denoise_id: str,
    *,
    on_progress: Optional[Callable[[ProcessingEvent], Any]] = None,
    timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    retry: Optional[RetryPolicy] = None,
) -> DoneEvent:
    """Follow the job to its end and return its :class:`DoneEvent`.

    ``on_progress(event)`` is called for each :class:`ProcessingEvent`; after
    a reconnection, progress may repeat.  ``timeout`` is an overall deadline
    in seconds (``None``: no deadline); it is checked before every connection
    and every pause, bounds the connect and response timeouts, and a
    watchdog cuts a response that is still open when it passes.
    ``read_timeout`` is how long a silent connection is trusted (default
    :data:`DEFAULT_READ_TIMEOUT`).

    Dropped connections, resets, truncated streams, stalls, HTTP 429 and 5xx
    are retried as ``retry`` (a :class:`RetryPolicy`) says, sending
    ``Last-Event-ID`` when the stream gave ids.  HTTP 401, 403, 404 and
    other 4xx are not.

    Raises :class:`DenoiseFailedError` if the job fails,
    :class:`WaitTimeoutError` at the deadline, :class:`ConfigurationError`
    before any request for a bad id or a missing key, and otherwise the
    error that ended the last attempt (:class:`AuthenticationError`,
    :class:`JobNotFoundError`, :class:`APIError`, :class:`TransportError`,
    :class:`ProtocolError`).

    If ``on_progress`` has a ``finish`` method, as :class:`ProgressBar`
    has, it is called once at the end with the done event or the exception.

    Example::

        done = wait(denoise_id, on_progress=lambda e: print(e.pct), timeout=3600)
    """
    job = _job_id(denoise_id)
    policy = retry if retry is not None else RetryPolicy()
    client = _Client(
        api_key,
        base_url,
        session,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        deadline=_deadline(timeout, policy.clock),
        clock=policy.clock,
    )
    finish = _finisher(on_progress)
    try:
        done = _follow(client, job, on_progress, policy)
    except BaseException as exc:
        if finish is not None:
            finish(exc)
        raise
    finally:
        client.close()
    if finish is not None:
        finish(done)
    return done


def _finisher(on_progress: Any) -> Optional[Callable[[Any], Any]]:
    """The ``finish`` of a display given as a callback (a ProgressBar, or
    one of its bound methods), to tell it the outcome."""
    finish = getattr(on_progress, "finish", None)
    if finish is None:
        finish = getattr(getattr(on_progress, "__self__", None), "finish", None)
    return finish if callable(finish) else None


class _News:
    """Tells progress not seen before from a replay, in constant space.

    Only news resets wait()'s failure count: a server that replays the same
    events and drops again must not keep a cron job waiting forever.  News
    is a percentage above the highest seen, or a new message at it; the
    messages at the highest percentage are kept as hashes, a bounded number.
    """

    __slots__ = ("_top", "_seen")

    def __init__(self) -> None:
        self._top = -1.0
        self._seen = set()  # type: Set[int]

    def is_new(self, event: ProcessingEvent) -> bool:
        if event.pct > self._top:
            self._top = event.pct
            self._seen = {hash(event.message)}
            return True
        if event.pct < self._top:
            return False
        key = hash(event.message)
        if key in self._seen or len(self._seen) >= 1024:
            return False
        self._seen.add(key)
        return True


def _follow(
    client: _Client,
    job: str,
    on_progress: Optional[Callable[[ProcessingEvent], Any]],
    policy: RetryPolicy,
) -> DoneEvent:
    """wait()'s loop: connect, read, and reconnect until a terminal event."""
    resume = _Resume()
    news = _News()
    failures = 0
    while True:
        advanced = False
        try:
            events = _events(client, job, resume)
            try:
                for event in events:
                    if isinstance(event, ProcessingEvent):
                        if news.is_new(event):
                            advanced = True
                        if on_progress is not None:
                            on_progress(event)
                    elif isinstance(event, DoneEvent):
                        return event
                    else:
                        raise DenoiseFailedError(event.message)
            finally:
                events.close()
        except (TransportError, APIError) as exc:
            if not _is_retryable(exc):
                raise
            failures = 1 if advanced else failures + 1
            if failures > policy.max_retries:
                raise
            server_retry = None if resume.retry_ms is None else resume.retry_ms / 1000.0
            doing = "reconnecting" if resume.connected else "trying again"
            _pause(exc, failures, policy, client.remaining(), doing, server_retry)


def _pause(
    exc: MunsitError,
    failures: int,
    policy: RetryPolicy,
    remaining: Optional[float],
    doing: str,
    server_retry: Optional[float] = None,
) -> None:
    """Sleep before the next attempt, or raise if that would pass a limit."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None and retry_after > policy.max_retry_after:
        raise exc
    delay = min(policy.delay(failures, retry_after, server_retry), _MAX_SLEEP)
    if remaining is not None and delay >= remaining:
        raise WaitTimeoutError(
            "the deadline would pass before the next attempt (in %.1f s) after: %s" % (delay, exc)
        ) from exc
    logger.log(
        logging.INFO if failures == 1 else logging.WARNING,
        "%s in %.2f s (retry %d of %d): %s",
        doing,
        delay,
        failures,
        policy.max_retries,
        exc,
    )
    policy.sleep(delay)


# --------------------------------------------------------------------------
# Progress display: one job's state, drawn on a terminal, a log or a notebook.
# --------------------------------------------------------------------------


class _JobState:
    """What a display shows of one job, apart from how it is drawn: the
    phase (upload, processing, download), how far it is, and its outcome.
    Every text in it is already redacted and printable."""

    __slots__ = ("label", "phase", "pct", "message", "sent", "total", "url", "outcome", "started")

    def __init__(self, label: Optional[str]) -> None:
        self.label = label
        self.started = time.monotonic()
        self.phase = None  # type: Optional[str]
        self.pct = None  # type: Optional[float]
        self.message = None  # type: Optional[str]
        self.sent = 0
        self.total = None  # type: Optional[int]
        self.url = None  # type: Optional[str]
        #: The final line ("done: URL", "saved PATH", "failed: ..."), once ended.
        self.outcome = None  # type: Optional[str]

    def text(self) -> str:
        """The state as a short line, without the bar."""
        if self.outcome is not None:
            return self.outcome
        if self.phase in ("upload", "download"):
            text = "%s %s" % (
                "uploading" if self.phase == "upload" else "downloading",
                _size(self.sent),
            )
            return text + (" of %s" % _size(self.total) if self.total else "")
        if self.pct is None:
            return ""
        return "%3d%%" % int(self.pct) + ("  " + self.message if self.message else "")

    def elapsed(self) -> str:
        return "%d:%02d" % divmod(int(time.monotonic() - self.started), 60)


def _shown(text: str) -> str:
    return _printable(_redact(text))


class ProgressBar:
    """A ready-made progress display for terminals, logs and notebooks.

    ::

        done = wait(denoise_id, on_progress=ProgressBar())

    It shows a job's whole life as one display: the upload (``upload``,
    or ``transfer`` given as ``submit``'s ``on_upload``), the processing
    events (call it with each :class:`ProcessingEvent`), the download
    (``transfer``), then the outcome.

    - On a terminal: one line updated in place (bar, percent, message,
      elapsed time), ended with a newline when the job ends.
    - Not a terminal (cron, a file, a pipe): no carriage returns; one
      timestamped line for each new phase, message or 10-percent step, and
      one for the outcome.
    - In Jupyter: one display, updated in place (IPython's own display; no
      other dependency); its last state says what happened.

    ``stream`` defaults to ``sys.stderr`` (looked up when needed); ``mode``
    forces ``"terminal"``, ``"log"`` or ``"notebook"`` instead of guessing;
    ``label`` (a file name, a job id) prefixes every line, so that jobs
    followed side by side can be told apart.  :func:`wait` and
    :func:`download` call :meth:`finish` with the outcome; so does leaving a
    ``with ProgressBar() as bar:`` block.  Server text is shown with control
    characters as spaces and the API key redacted, so it cannot forge log
    lines or send terminal escapes.  A stream that fails (a closed pipe)
    ends the display, never the job.
    """

    _MODES = ("terminal", "log", "notebook")

    def __init__(
        self,
        stream: Optional[TextIO] = None,
        *,
        mode: Optional[str] = None,
        label: Optional[str] = None,
    ) -> None:
        if mode is not None and mode not in self._MODES:
            raise ConfigurationError("mode must be one of %s" % ", ".join(self._MODES))
        self._stream = stream
        self._mode = mode
        self._state = _JobState(None if label is None else _shown(str(label)))
        self._view = None  # type: Optional[_View]
        self._finished = False

    @property
    def mode(self) -> str:
        """The display in use: "terminal", "log" or "notebook"."""
        if self._mode is None:
            if self._stream is None and _notebook_kernel():
                self._mode = "notebook"
            else:
                isatty = getattr(self._out(), "isatty", None)
                try:
                    self._mode = "terminal" if isatty is not None and isatty() else "log"
                except (OSError, ValueError):  # a closed stream
                    self._mode = "log"
        return self._mode

    def __call__(self, event: ProcessingEvent) -> None:
        """Show one processing event."""
        if self._finished:
            self._new_job()  # a reused display: the next job
        state = self._resume("processing")
        message = _shown(event.message) if event.message else None
        changed = message != state.message or state.pct is None
        state.pct = float(event.pct)
        state.message = message
        self._draw(changed or state.pct >= 100)

    def upload(self, sent: int, total: Optional[int]) -> None:
        """Show an upload's progress: ``sent`` of ``total`` bytes."""
        if self._finished:
            self._new_job()
        self._transfer("upload", sent, total)

    def transfer(self, received: int, total: Optional[int]) -> None:
        """Show a download's progress: ``received`` of ``total`` bytes."""
        self._transfer("download", received, total)

    def finish(self, outcome: Union[DoneEvent, BaseException, str, None] = None) -> None:
        """End the display with the outcome: a :class:`DoneEvent`, an
        exception, a line of text (``"saved clean.wav"``), or ``None`` to
        end it as it stands."""
        if self._finished:
            return
        self._finished = True
        state = self._state
        if isinstance(outcome, DoneEvent):
            state.url = _shown(outcome.url)
            state.pct = 100.0
            state.outcome = "done: %s" % state.url
        elif isinstance(outcome, DenoiseFailedError):
            state.outcome = "failed: %s" % _shown(outcome.message)
        elif isinstance(outcome, KeyboardInterrupt):
            state.outcome = "stopped: interrupted"
        elif isinstance(outcome, BaseException):
            state.outcome = "stopped: %s" % _shown(str(outcome) or type(outcome).__name__)
        elif outcome:
            state.outcome = _shown(str(outcome))
        elif state.phase in ("upload", "download") and state.total and state.sent == state.total:
            state.outcome = "%s %s" % (
                "uploaded" if state.phase == "upload" else "downloaded",
                _size(state.sent),
            )
        if state.phase is not None or state.outcome is not None:
            self._view_for().end(state)

    def note(self, text: str) -> None:
        """Show a line of text (a warning, say) without garbling the display."""
        self._view_for().note(_shown(text), self._state)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.finish(exc)

    def _transfer(self, phase: str, done: int, total: Optional[int]) -> None:
        state = self._resume(phase)
        changed = state.phase != phase
        state.sent = done
        state.total = total if total else None
        self._draw(changed or done == total)

    def _resume(self, phase: str) -> _JobState:
        """The state, moved to ``phase``: a finished display goes on when
        the same job enters a later phase (a download after ``done``)."""
        state = self._state
        if self._finished:
            self._finished = False
            state.outcome = None
            self._view_for().restart()
        if state.phase != phase:
            state.phase = phase
            self._view_for().phase_changed()
        return state

    def _new_job(self) -> None:
        self._state = _JobState(self._state.label)
        self._finished = False
        self._view_for().restart()

    def _draw(self, important: bool) -> None:
        self._view_for().update(self._state, important)

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _view_for(self) -> "_View":
        if self._view is None:
            mode = self.mode
            if mode == "notebook":
                self._view = _NotebookView(self._out)
            elif mode == "terminal":
                self._view = _TerminalView(self._out)
            else:
                self._view = _LogView(self._out)
        return self._view


class _View:
    """How a display draws: the base writes to a stream, safely."""

    def __init__(self, out: Callable[[], TextIO]) -> None:
        self._out = out
        self._dead = False

    def update(self, state: _JobState, important: bool) -> None:
        raise NotImplementedError

    def end(self, state: _JobState) -> None:
        raise NotImplementedError

    def note(self, text: str, state: _JobState) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """The display goes on after an end (a new phase or a new job)."""

    def phase_changed(self) -> None:
        """The job entered a new phase."""

    def unicode_ok(self) -> bool:
        encoding = getattr(self._out(), "encoding", None) or ""
        return encoding.lower().replace("-", "").startswith("utf")

    def bar(self, state: _JobState, width: int = 24) -> str:
        if state.phase in ("upload", "download"):
            pct = 100.0 * state.sent / state.total if state.total else None
        else:
            pct = state.pct
        if pct is None:
            return ""
        filled = int(round(width * min(max(pct, 0.0), 100.0) / 100.0))
        full, empty = ("\u2588", "\u2591") if self.unicode_ok() else ("#", "-")
        return "[%s%s]" % (full * filled, empty * (width - filled))

    def write(self, text: str) -> None:
        """Write and flush; a stream that fails ends the display, not the job."""
        if self._dead:
            return
        out = self._out()
        try:
            try:
                out.write(text)
            except UnicodeEncodeError:
                encoding = getattr(out, "encoding", None) or "ascii"
                out.write(text.encode(encoding, "replace").decode(encoding, "replace"))
            flush = getattr(out, "flush", None)
            if flush is not None:
                flush()
        except (OSError, ValueError):  # a closed pipe or file
            self._dead = True


class _TerminalView(_View):
    """One line, redrawn in place, at most ten times a second."""

    def __init__(self, out: Callable[[], TextIO]) -> None:
        super().__init__(out)
        self._width = 0  # terminal columns of the line now shown
        self._shown = None  # type: Optional[_JobState]
        self._last = 0.0

    def update(self, state: _JobState, important: bool) -> None:
        now = time.monotonic()
        if important or now - self._last >= 0.1:
            self._last = now
            self._draw(state, self.bar(state), state.text())

    def end(self, state: _JobState) -> None:
        text = state.outcome
        if text is not None and text.startswith("done: "):
            text = "100%  done"  # the URL follows on stdout, not in the bar
        if text:
            self._draw(state, self.bar(state), text)
        if self._width:
            self.write("\n")
            self._width = 0
        self._shown = None

    def note(self, text: str, state: _JobState) -> None:
        shown = self._width
        self.write(("\r" + " " * shown + "\r" if shown else "") + text + "\n")
        self._width = 0
        if shown and self._shown is not None:
            self._draw(self._shown, self.bar(self._shown), self._shown.text())

    def _draw(self, state: _JobState, bar: str, text: str) -> None:
        self._shown = state
        line = "%s %s" % (bar, text) if bar else text
        if state.label:
            line = "%s  %s" % (state.label, line)
        if not self.unicode_ok():
            encoding = getattr(self._out(), "encoding", None) or "ascii"
            line = line.encode(encoding, "replace").decode(encoding, "replace")
        tail = "  " + state.elapsed()
        # The message is what gets cut, not the elapsed time after it.
        line, width = _fit(line, self._columns() - 1 - len(tail))
        line += tail
        width += len(tail)
        padding = " " * max(self._width - width, 0)
        self._width = width
        self.write("\r" + line + padding)

    def _columns(self) -> int:
        # The stream's own terminal: stdout may well be a pipe ($(...)).
        try:
            columns = os.get_terminal_size(self._out().fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a real terminal
            columns = 0
        # 0 is what a terminal that never set its size reports.
        return columns or shutil.get_terminal_size((80, 24)).columns


class _LogView(_View):
    """Timestamped lines, no carriage returns: one per new phase, message or
    10-percent step (10 MB when a transfer's size is unknown), and one for
    the outcome."""

    def __init__(self, out: Callable[[], TextIO]) -> None:
        super().__init__(out)
        self.restart()

    def restart(self) -> None:
        self._step = -1
        self._message = None  # type: Optional[str]

    def phase_changed(self) -> None:
        self.restart()

    def update(self, state: _JobState, important: bool) -> None:
        if state.phase in ("upload", "download"):
            if state.total:
                step = int(100 * state.sent / state.total) // 10
            else:
                step = state.sent // (10 * 1000 * 1000)
            message = None
        else:
            step = int((state.pct or 0) // 10)
            message = state.message
        if step > self._step or (message and message != self._message):
            self._step = max(step, self._step)
            self._message = message
            self.line(state, state.text())

    def end(self, state: _JobState) -> None:
        if state.outcome:
            self.line(state, state.outcome)

    def note(self, text: str, state: _JobState) -> None:
        self.line(state, text)

    def line(self, state: Optional[_JobState], text: str) -> None:
        label = state.label + ": " if state is not None and state.label else ""
        self.write("%s munsit: %s%s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), label, text))


class _NotebookView(_View):
    """One IPython display, updated in place (at most ten times a second)."""

    def __init__(self, out: Callable[[], TextIO]) -> None:
        super().__init__(out)
        self._handle = None  # type: Any
        self._last = 0.0
        self._fallback = None  # type: Optional[_LogView]

    def update(self, state: _JobState, important: bool) -> None:
        now = time.monotonic()
        if important or now - self._last >= 0.1:
            self._last = now
            self._show(state, state.text())

    def end(self, state: _JobState) -> None:
        self._show(state, state.text())

    def note(self, text: str, state: _JobState) -> None:
        self._show(state, text)

    def _show(self, state: _JobState, text: str) -> None:
        import html

        if self._fallback is not None:
            self._fallback.line(state, text)
            return
        try:
            display = importlib.import_module("IPython.display").display
        except ImportError:  # mode="notebook" forced outside IPython
            self._fallback = _LogView(self._out)
            self._fallback.line(state, text)
            return
        url = state.url
        body = '<span dir="auto">%s</span>' % html.escape(text)
        # A link only to a plain http(s) URL: never javascript: or data:.
        if url and state.outcome is not None and _is_web_url(url):
            link = '<a href="%s" target="_blank" rel="noopener">%s</a>' % (
                html.escape(url, quote=True),
                html.escape(url),
            )
            if state.outcome.startswith("done: "):
                body = "done: " + link
            else:
                body += " (%s)" % link
        label = '<b dir="auto">%s</b> ' % html.escape(state.label) if state.label else ""
        pct = (
            100.0 * state.sent / state.total
            if state.phase in ("upload", "download") and state.total
            else state.pct
        )
        markup = (
            '<div style="font-family: monospace">%s'
            '<progress value="%.1f" max="100" style="width: 16em; vertical-align: middle">'
            '</progress> %s <span style="color: gray">%s</span></div>'
            % (label, pct or 0.0, body, html.escape(state.elapsed()))
        )
        plain = " ".join(
            part for part in (state.label, self.bar(state), text, state.elapsed()) if part
        )
        bundle = {"text/plain": plain, "text/html": markup}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def _is_web_url(url: str) -> bool:
    """Whether ``url`` is a clean http(s) URL, fit to print or to link."""
    try:
        scheme, host, _ = _origin(url)
    except ValueError:
        return False
    return scheme in ("http", "https") and bool(host) and url.isprintable()


def _fit(text: str, columns: int) -> Tuple[str, int]:
    """``text`` cut to ``columns`` terminal columns, and the columns it takes.

    Combining marks (Arabic harakat among them) take no column and wide East
    Asian characters two: len() would misjudge the padding that blanks out a
    longer previous line.
    """
    import unicodedata  # only a terminal display measures text

    widths = [
        0
        if unicodedata.category(char) in ("Mn", "Me", "Cf")
        else 2
        if unicodedata.east_asian_width(char) in ("W", "F")
        else 1
        for char in text
    ]
    total = sum(widths)
    if total <= columns:
        return text, total
    ellipsis = "..." if text.isascii() else "\u2026"
    budget = columns - len(ellipsis)
    width = 0
    for index, step in enumerate(widths):
        if width + step > budget:
            return text[:index] + ellipsis, width + len(ellipsis)
        width += step
    return text, total  # not reached: total > columns >= budget


def _notebook_kernel() -> bool:
    """Whether we run inside a Jupyter kernel (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _size(count: int) -> str:
    if count < 1000:
        return "%d B" % count
    value = count / 1000.0
    for unit in ("KB", "MB"):
        if value < 1000:
            return "%.1f %s" % (value, unit)
        value /= 1000
    return "%.1f GB" % value


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------

#: The largest result :func:`download` accepts unless told otherwise (2 GiB).
#: Fifteen minutes of 96 kHz stereo 32-bit audio is about 700 MB.
DEFAULT_MAX_DOWNLOAD = 2 * 1024**3


def download(
    done: DoneEvent,
    path: str,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    timeout: Optional[float] = None,
    read_timeout: float = 60.0,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    on_progress: Union[Callable[[int, Optional[int]], Any], ProgressBar, None] = None,
    max_size: int = DEFAULT_MAX_DOWNLOAD,
    allow_http: bool = False,
    retry: Optional[RetryPolicy] = None,
) -> str:
    """Save the denoised audio of ``done`` to ``path``; return the path.

    The file is streamed to disk and written atomically: bytes go to a
    temporary file in the same folder, renamed to ``path`` only when the
    whole body has arrived, so a failure or Ctrl-C leaves nothing at
    ``path`` (and an earlier file there untouched, its permission bits kept
    by the new one).  A symlink is written through (the file it points to is
    replaced); a ``path`` that is a device, a FIFO or a folder is refused
    with :class:`ConfigurationError` before any request.

    A dropped connection is resumed where it stopped (``Range``, with
    ``If-Range`` when the server gave an ETag or Last-Modified), retried as
    ``retry`` says within ``timeout``; a server that answers 200 instead of
    206 is read again from the start.  The body must arrive as sent
    (identity; a compressed one is refused) and stay within ``max_size``
    bytes.  The API key is sent only if ``done.url`` is on the API's own
    origin, and never to a host a redirect names; a plain-http URL is
    refused while the API is https, unless ``allow_http``.

    ``on_progress(received, total)`` is called as bytes arrive (``total`` is
    ``None`` when unknown); a :class:`ProgressBar` fits, and is finished with
    the saved path.  ``timeout`` is an overall deadline in seconds.

    Raises :class:`APIError` for an HTTP error, :class:`TransportError` when
    the transfer keeps failing, :class:`ProtocolError` for a body that is
    not what was asked for, :class:`WaitTimeoutError` at the deadline,
    ``OSError`` if the file cannot be written.
    """
    policy = retry if retry is not None else RetryPolicy()
    if not isinstance(max_size, int) or max_size < 0:
        raise ConfigurationError("max_size must be a number of bytes >= 0")
    finish = _finisher(on_progress)
    report = _transfer_callback(on_progress)
    try:
        target = _output_path(path)
        with _Client(
            api_key,
            base_url,
            session,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            deadline=_deadline(timeout, policy.clock),
            clock=policy.clock,
            require_key=False,
            allow_http=allow_http,
        ) as client:
            try:
                _save(client, done.url, target, report, max_size, policy)
            except WaitTimeoutError as exc:
                raise WaitTimeoutError("the deadline passed before the download finished") from exc
    except BaseException as exc:
        if finish is not None:
            finish(exc)
        raise
    if finish is not None:
        finish("saved %s" % path)
    return path


def _transfer_callback(on_progress: Any) -> Optional[Callable[[int, Optional[int]], Any]]:
    """A display's ``transfer`` method, or the callback itself."""
    transfer = getattr(on_progress, "transfer", None)
    chosen = transfer if callable(transfer) else on_progress
    return cast(Optional[Callable[[int, Optional[int]], Any]], chosen)


def _output_path(path: "Union[str, os.PathLike[str]]") -> str:
    """The regular file that saving to ``path`` replaces: ``path`` itself,
    or the file a symlink there points to.  ConfigurationError for anything
    that must not be replaced, found before any request is sent."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigurationError("the output must be a file name, got %r" % (path,))
    name = os.fspath(path)
    path = name if isinstance(name, str) else os.fsdecode(name)
    try:
        # os.stat follows symlinks: a link to /dev/null or /proc/self/fd/1 is
        # judged by what it points to.
        mode = os.stat(path).st_mode  # type: Optional[int]
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ConfigurationError("cannot write %s: %s" % (path, exc.strerror)) from None
    if mode is not None and not _stat.S_ISREG(mode):
        kind = "a folder" if _stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigurationError("cannot write %s: it is %s" % (path, kind))
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise ConfigurationError("cannot write %s: no folder %s" % (path, folder))
    if not os.access(folder, os.W_OK):
        raise ConfigurationError("cannot write %s: the folder is not writable" % path)
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, ValueError, OSError):  # no pathconf (Windows)
        name_max = 255
    if len(os.fsencode(os.path.basename(real))) > name_max:
        raise ConfigurationError(
            "cannot write %s: the name is longer than %d bytes" % (path, name_max)
        )
    return real


def _temporary_beside(target: str) -> Tuple[str, int]:
    """Create an empty file next to ``target`` for its new content, with
    the permission bits of the file it will replace; (its path, its fd)."""
    folder, name = os.path.split(target)
    # A short stem, so that the name stays legal whatever the target's length.
    stem = name.encode("utf-8", "surrogateescape")[:96].decode("utf-8", "ignore")
    temporary = os.path.join(folder, ".%s.%s.part" % (stem, os.urandom(4).hex()))
    try:
        fd = os.open(
            temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
        )
    except OSError as exc:
        raise OSError(exc.errno, "cannot write %s: %s" % (target, exc.strerror)) from exc
    try:
        old = os.stat(target)
    except OSError:
        return temporary, fd
    with contextlib.suppress(OSError):
        os.chmod(temporary, _stat.S_IMODE(old.st_mode))
        if hasattr(os, "chown") and old.st_uid != os.getuid():
            os.chown(temporary, old.st_uid, old.st_gid)
    return temporary, fd


def _replace(temporary: str, target: str) -> None:
    """Rename into place, then make the rename itself durable."""
    os.replace(temporary, target)
    if os.name == "posix":
        fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot sync a folder
            pass
        finally:
            os.close(fd)


def _save(
    client: _Client,
    url: str,
    target: str,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    policy: RetryPolicy,
) -> None:
    temporary, fd = _temporary_beside(target)
    try:
        with os.fdopen(fd, "r+b") as out:
            _fetch(client, url, out, report, max_size, policy)
            out.flush()
            os.fsync(out.fileno())
        _replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


_CONTENT_RANGE = re.compile(r"bytes (\d{1,18})-(\d{1,18})/(\d{1,18}|\*)", re.ASCII)


class _Body:
    """What is known of the result being downloaded, across attempts."""

    __slots__ = ("received", "furthest", "total", "validator")

    def __init__(self) -> None:
        self.received = 0
        self.furthest = 0
        self.total = None  # type: Optional[int]
        self.validator = None  # type: Optional[str]


def _fetch(
    client: _Client,
    url: str,
    out: Any,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    policy: RetryPolicy,
) -> None:
    """Fetch ``url`` into ``out``, resuming across dropped connections."""
    body = _Body()
    failures = 0
    while True:
        furthest = body.furthest
        try:
            if _fetch_once(client, url, out, report, max_size, body):
                return
            continue  # the server cannot resume: start again from zero
        except (TransportError, APIError) as exc:
            if not _is_retryable(exc):
                raise
            # Only bytes past the furthest point reached count as progress:
            # a server that always drops at the same offset gives up in time.
            failures = 1 if body.furthest > furthest else failures + 1
            if failures > policy.max_retries:
                raise
            doing = "resuming the download at byte %d" % body.received
            _pause(
                exc,
                failures,
                policy,
                client.remaining(),
                doing if body.received else "trying the download again",
            )


def _fetch_once(
    client: _Client,
    url: str,
    out: Any,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    body: _Body,
) -> bool:
    """One GET; False when it has to start again from zero."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}  # type: Dict[str, Union[str, bytes]]
    resuming = body.received > 0 and (body.validator is not None or body.total is not None)
    if resuming:
        headers["Range"] = "bytes=%d-" % body.received
        if body.validator is not None:
            headers["If-Range"] = body.validator
    elif body.received:
        _restart(out, body, report)
    response = client.send("GET", url, headers, foreign=True)
    try:
        status = response.status_code
        if status == 206 and resuming:
            if not _continues(response, body):
                _close(response)
                _restart(out, body, report)
                return False
        elif status == 200:
            if body.received:
                _restart(out, body, report)  # the server sent the whole file again
            length = _ascii_int(response.headers.get("Content-Length"))
            body.total = length
            etag = response.headers.get("ETag", "")
            if etag and not etag.startswith("W/"):  # If-Range takes strong ETags only
                body.validator = etag
            else:
                body.validator = response.headers.get("Last-Modified") or None
        elif status == 416 and resuming:
            _close(response)
            _restart(out, body, report)
            return False
        else:
            raise client.error(response, for_job=False)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ProtocolError(
                "the result came %s-encoded although it was asked for as sent"
                % _clean(encoding, 40)
            )
        if body.total is not None and body.total > max_size:
            raise ProtocolError(
                "the result is %d bytes, more than the %d allowed (max_size)"
                % (body.total, max_size)
            )
        for chunk in client.chunks(response, decode=False):
            if body.received + len(chunk) > max_size:
                raise ProtocolError(
                    "the result is larger than the %d bytes allowed (max_size)" % max_size
                )
            out.write(chunk)
            body.received += len(chunk)
            body.furthest = max(body.furthest, body.received)
            if report is not None:
                report(body.received, body.total)
        if body.total is not None and body.received != body.total:
            raise TransportError(
                "the download ended after %d of %d bytes" % (body.received, body.total)
            )
        return True
    finally:
        _close(response)


def _continues(response: requests.Response, body: _Body) -> bool:
    """Whether a 206 answer is the rest of the same file."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None:
        return False
    start, end, total = match.groups()
    if int(start) != body.received or int(end) < int(start):
        return False
    if total != "*":
        if body.total is not None and int(total) != body.total:
            return False
        body.total = int(total)
    return True


def _restart(out: Any, body: _Body, report: Optional[Callable[[int, Optional[int]], Any]]) -> None:
    out.seek(0)
    out.truncate()
    body.received = 0
    body.total = None
    body.validator = None
    if report is not None:
        report(0, None)


# --------------------------------------------------------------------------
# Demo server: a local simulator of the progress endpoint
# --------------------------------------------------------------------------

_DEMO_STEPS = (
    (3, "Queued"),
    (9, "Extracting audio"),
    (17, "جارٍ استخراج الصوت"),
    (26, "Analysing the noise profile"),
    (37, "تحليل بصمة الضوضاء"),
    (49, "Running noise reduction"),
    (61, "جارٍ تقليل الضوضاء"),
    (72, "Restoring speech clarity"),
    (84, "تحسين وضوح الكلام"),
    (93, "Encoding the result"),
    (100, "اكتملت المعالجة"),
)
_DEMO_FAILURE = "the audio could not be processed (تعذّرت معالجة الملف الصوتي)"


@contextlib.contextmanager
def demo_server(*, fail: bool = False, duration: float = 4.0) -> Iterator[str]:
    """Run a local simulator of the Munsit progress API; yield its base URL.

    The simulator listens on 127.0.0.1 (a free port) and speaks the
    documented protocol: chunked SSE with ``processing`` events (English and
    Arabic messages), heartbeat comments, then ``done`` (or ``error`` when
    ``fail``), over about ``duration`` seconds per job.  A job starts when
    its id is first asked for; reconnecting resumes it, and a finished job
    replays its final event.  The ``done`` URL serves a short WAV file.  Any
    non-empty API key is accepted; a missing one gets a 401.  Use it to try
    your integration without the real API::

        with demo_server() as base_url:
            done = wait(str(uuid.uuid4()), api_key="demo", base_url=base_url)
            download(done, "out.wav", base_url=base_url)
    """
    import http.server  # only the demo needs it: keep it off the import path

    state = _DemoState(fail, duration)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _demo_handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/api/v1" % server.server_address[1]
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


class _DemoState:
    def __init__(self, fail: bool, duration: float) -> None:
        self.fail = fail
        self.interval = max(duration, 0.1) / len(_DEMO_STEPS)
        self.started = {}  # type: Dict[str, float]
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def start_of(self, job: str) -> float:
        with self.lock:
            return self.started.setdefault(job, time.monotonic())


def _demo_handler(state: _DemoState) -> Any:
    """The simulator's request handler class, bound to one ``state``."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        demo = state
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("demo server: " + format, *args)

        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if parts[:3] == ["api", "v1", "files"] and len(parts) == 4:
                self._send_wav()
            elif (
                len(parts) == 5 and parts[:3] == ["api", "v1", "denoise"] and parts[4] == "progress"
            ):
                job = _canonical_uuid(parts[3])
                if not (self.headers.get("x-api-key") or "").strip():
                    self._send_json(
                        401, {"errorCode": "40101", "errorMessage": "Invalid or missing API key"}
                    )
                elif job is None:
                    self._send_json(404, {"message": "Denoising job not found"})
                else:
                    self._send_progress(job)
            else:
                self._send_json(404, {"message": "Not found"})

        def _send_json(self, status: int, payload: Dict[str, str]) -> None:
            body = json.dumps(payload).encode("utf-8")
            # One answer per connection, so no handler thread outlives the server.
            self.close_connection = True
            self.send_response(status)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_wav(self) -> None:
            body = _demo_wav()
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_progress(self, job: str) -> None:
            demo = self.demo
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            started = demo.start_of(job)
            last = len(_DEMO_STEPS)
            failing_at = last // 2 if demo.fail else None
            self._chunk("retry: 1000\n\n")
            step = min(int((time.monotonic() - started) / demo.interval), last)
            while step <= last:  # at most one pass over the steps
                if failing_at is not None and step >= failing_at:  # replayed to latecomers
                    self._event(step, {"stage": "error", "message": _DEMO_FAILURE})
                    break
                if step == last:
                    url = "http://%s/api/v1/files/%s_denoised.wav" % (self.headers.get("Host"), job)
                    self._event(step, {"stage": "done", "url": url, "denoiseId": job})
                    break
                pct, message = _DEMO_STEPS[step]
                self._event(step, {"stage": "processing", "pct": pct, "message": message})
                due = started + (step + 1) * demo.interval
                while time.monotonic() < due:
                    if demo.stop.wait(min(demo.interval / 2, max(due - time.monotonic(), 0))):
                        return
                    self._chunk(": keep-alive\n\n")
                step += 1
            self.wfile.write(b"0\r\n\r\n")

        def _event(self, step: int, payload: Dict[str, Any]) -> None:
            self._chunk("id: %d\ndata: %s\n\n" % (step, json.dumps(payload, ensure_ascii=False)))

        def _chunk(self, text: str) -> None:
            data = text.encode("utf-8")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    return Handler


def _demo_wav() -> bytes:
    """One second of a quiet 440 Hz tone, as a 16 kHz mono WAV file."""
    import io
    import struct
    import wave

    rate = 16000
    samples = struct.pack(
        "<%dh" % rate, *(int(3000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples)
    return buffer.getvalue()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

# The command line's exit statuses (see _EPILOG and the README).
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_GAVE_UP = 4
EXIT_PROTOCOL = 5
EXIT_INTERRUPTED = 130
#: stdout's reader went away (``| head``): what a shell shows for SIGPIPE.
EXIT_BROKEN_PIPE = 141

_EPILOG = (
    """\
exit status:
  0    the job is done (its result URL is on stdout)
  1    the job failed (the server sent an error event)
  2    usage or configuration error (bad id, no API key, bad option, an
       -o that is not a regular file)
  3    the API refused the request (401/403: key; 404: no such job; other 4xx)
  4    gave up: the deadline passed, the connection kept failing, or the
       download could not be written; worth trying again later
  5    the server sent something this client cannot read (or a result URL
       that is not a clean http(s) URL)
  130  interrupted (Ctrl-C or SIGTERM); no partial download is left
  141  stdout was closed by its reader (| head); nothing more is written

environment:
  MUNSIT_API_KEY   the API key (or use --api-key-file)
  MUNSIT_BASE_URL  the API's address (default %s)

examples:
  munsit-progress --demo                    # a simulated job, no key needed
  munsit-progress 5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1 -o clean.wav
  munsit-progress --json --quiet ID | jq -r '.pct // .url // .message'
"""
    % DEFAULT_BASE_URL
)


def _parser() -> "argparse.ArgumentParser":
    import argparse

    parser = argparse.ArgumentParser(
        prog="munsit-progress",
        description="Follow a Munsit denoise job until it ends: show its progress,\n"
        "print the URL of the denoised audio, optionally download it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "denoise_id",
        nargs="?",
        metavar="DENOISE_ID",
        help="the denoiseId returned by POST /denoise",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="when done, download the denoised audio to FILE (a symlink is written through)",
    )
    _add_common_options(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="write each event to stdout as one JSON object per line "
        "(progress still goes to stderr unless -q)",
    )
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument(
        "--demo",
        action="store_true",
        help="follow a simulated job on a local server (no key, no network)",
    )
    demo.add_argument(
        "--demo-fail", action="store_true", help="like --demo, but the simulated job fails"
    )
    parser.add_argument("--version", action="version", version="munsit-progress " + __version__)
    return parser


def _add_common_options(parser: "argparse.ArgumentParser") -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up (exit 4) if the job has not ended within SECONDS",
    )
    parser.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the API key from PATH ('-' for stdin) instead of $MUNSIT_API_KEY",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="the API's address (default: $MUNSIT_BASE_URL or %s)" % DEFAULT_BASE_URL,
    )
    parser.add_argument(
        "--allow-http",
        action="store_true",
        help="download a result over plain http even though the API is https",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="show no progress on stderr")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the connection's details and show tracebacks",
    )


class _StdoutClosed(Exception):
    """stdout's reader went away: the command stops, quietly."""

    def __init__(self) -> None:
        super().__init__("standard output was closed")


class _Console:
    """Where the command line writes.  stdout carries results only; stderr
    carries progress, notes and errors, timestamped when it is not a
    terminal (a cron log).  A closed stderr silences them and the job goes
    on; a closed stdout stops the command (exit 141)."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.quiet = quiet
        self.verbose = verbose
        isatty = getattr(sys.stderr, "isatty", None)
        try:
            self.log_mode = not (isatty is not None and isatty())
        except (OSError, ValueError):
            self.log_mode = True
        self._stderr_gone = False

    def out(self, text: str) -> None:
        """One line of result on stdout."""
        try:
            try:
                sys.stdout.write(text + "\n")
            except UnicodeEncodeError:
                encoding = getattr(sys.stdout, "encoding", None) or "ascii"
                sys.stdout.write(text.encode(encoding, "replace").decode(encoding) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # ValueError: stdout closed in-process
            raise _StdoutClosed() from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EINVAL):
                raise _StdoutClosed() from None
            raise

    def err(self, text: str) -> None:
        """One line on stderr, prefixed with the program's name (and the
        time, in a log)."""
        if self._stderr_gone or sys.stderr is None:
            return
        line = "munsit-progress: " + _printable(text)
        if self.log_mode:
            line = "%s %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), line)
        try:
            try:
                sys.stderr.write(line + "\n")
            except UnicodeEncodeError:
                encoding = getattr(sys.stderr, "encoding", None) or "ascii"
                sys.stderr.write(line.encode(encoding, "replace").decode(encoding) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            self._stderr_gone = True

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err(text)

    def error(self, text: str) -> None:
        if self.verbose:
            import traceback

            with contextlib.suppress(OSError, ValueError):
                traceback.print_exc()
        self.err("error: " + text)

    def json(self, event: Event) -> None:
        self.out(
            json.dumps(
                {k: _redact(v) if isinstance(v, str) else v for k, v in event.to_dict().items()}
            )
        )

    def result(self, url: str) -> None:
        """The result URL, alone on its line; only a clean http(s) URL."""
        if not _is_web_url(url):
            raise ProtocolError("the result URL is not a clean http(s) URL: %s" % _clean(url, 100))
        self.out(_redact(url))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already shown
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    demo = args.demo or args.demo_fail
    if not (demo or args.denoise_id):
        return _usage(parser, "give a DENOISE_ID, or --demo to watch a simulated job")
    if demo and (args.base_url or args.api_key_file):
        return _usage(parser, "--demo runs its own local server: drop --base-url/--api-key-file")
    if args.timeout is not None and not 0 < args.timeout < math.inf:
        return _usage(parser, "--timeout must be a positive number of seconds")
    if args.output == "":
        return _usage(parser, "-o needs a file name")
    console = _Console(args.quiet, args.verbose)

    def run() -> int:
        if args.denoise_id is not None and _canonical_uuid(args.denoise_id) is None:
            raise ConfigurationError("DENOISE_ID must be a UUID, got %r" % args.denoise_id)
        if args.output is not None:
            _output_path(args.output)
        if demo:
            with demo_server(fail=args.demo_fail) as base_url:
                job = args.denoise_id or _random_uuid()
                console.note("demo: simulated job %s (local server, no key)" % job)
                return _follow_job(args, console, job, "demo", base_url, bar)
        api_key = _cli_key(args)
        return _follow_job(args, console, args.denoise_id, api_key, args.base_url, bar)

    bar = None if args.quiet else ProgressBar()
    return _run_command(args, console, bar, run)


def _run_command(
    args: Any, console: _Console, bar: Optional[ProgressBar], run: Callable[[], int]
) -> int:
    """Run a command's body with the CLI's logging, signals and error
    handling around it; return its exit status."""
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
        )
    previous_sigterm = _terminate_on_sigterm()
    handler = None
    previous_level = logger.level
    if not args.verbose:
        # Reconnections and warnings, shown through the display.
        handler = _NoteHandler(bar, console)
        handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > handler.level:
            logger.setLevel(handler.level)
    try:
        return run()
    except _StdoutClosed:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _end_display(bar)
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except MunsitError as exc:
        _end_display(bar)
        console.error(str(exc))
        return _exit_status(exc)
    except OSError as exc:  # writing the output file
        _end_display(bar)
        console.error(_printable(str(exc)))
        return EXIT_GAVE_UP
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous_level)
        if previous_sigterm is not None:
            _restore_sigterm(previous_sigterm)


def _drop_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final
    flush does not complain about the closed pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _usage(parser: "argparse.ArgumentParser", text: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        parser.print_usage(sys.stderr)
        print("munsit-progress: error: %s" % text, file=sys.stderr, flush=True)
    return EXIT_USAGE


def _end_display(bar: Optional[ProgressBar]) -> None:
    """End the progress line; the error line that follows says the rest."""
    if bar is not None:
        bar.finish(None)


class _NoteHandler(logging.Handler):
    """The command line's log handler: one line on stderr per record."""

    def __init__(self, bar: Optional[ProgressBar], console: _Console) -> None:
        super().__init__()
        self._bar = bar
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        text = _printable(record.getMessage())
        if self._bar is None:
            self._console.err(text)
        elif self._bar.mode == "log":
            self._bar.note(text)  # the log line carries its own prefix
        else:
            self._bar.note("munsit-progress: " + text)


def _follow_job(
    args: Any,
    console: _Console,
    job: str,
    api_key: Optional[str],
    base_url: Optional[str],
    bar: Optional[ProgressBar],
) -> int:
    """``munsit-progress DENOISE_ID``: follow, print the URL, maybe save."""
    started = time.monotonic()

    def on_progress(event: ProcessingEvent) -> None:
        if args.json:
            console.json(event)
        if bar is not None:
            bar(event)

    try:
        done = wait(
            job, on_progress=on_progress, timeout=args.timeout, api_key=api_key, base_url=base_url
        )
    except DenoiseFailedError as exc:
        if args.json:
            console.json(ErrorEvent(exc.message))
        raise
    if bar is not None:
        bar.finish(done)
    if args.json:
        console.json(done)
    else:
        console.result(done.url)
    if args.output is not None:
        remaining = None if args.timeout is None else args.timeout - (time.monotonic() - started)
        download(
            done,
            args.output,
            api_key=api_key,
            base_url=base_url,
            timeout=remaining,
            on_progress=bar,
            allow_http=args.allow_http,
        )
    return EXIT_OK


_KEY_FILE_LIMIT = 4096


def _cli_key(args: Any) -> str:
    """The API key from --api-key-file or the environment, or raise."""
    api_key = _read_key(args.api_key_file) or os.environ.get(_API_KEY_ENV) or ""
    if not api_key.strip():
        raise ConfigurationError("no API key: set %s or use --api-key-file PATH" % _API_KEY_ENV)
    return api_key


def _read_key(path: Optional[str]) -> Optional[str]:
    """The first line of the key file, read without loading more than a few
    KB (``/dev/zero`` must not fill memory), a UTF-8 BOM dropped."""
    if path is None:
        return None
    try:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)
            if stdin is None:
                raise ConfigurationError("--api-key-file -: there is no standard input")
            line = stdin.readline(_KEY_FILE_LIMIT + 1)
        else:
            with open(path, "rb") as handle:
                line = handle.readline(_KEY_FILE_LIMIT + 1)
        if len(line) > _KEY_FILE_LIMIT:
            raise ConfigurationError(
                "the API key file's first line is longer than %d bytes" % _KEY_FILE_LIMIT
            )
        return cast(bytes, line).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError("cannot read the API key file: %s" % exc) from exc


def _exit_status(exc: MunsitError) -> int:
    if isinstance(exc, DenoiseFailedError):
        return EXIT_JOB_FAILED
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, (WaitTimeoutError, TransportError)):
        return EXIT_GAVE_UP
    if isinstance(exc, APIError):
        return EXIT_GAVE_UP if _is_retryable(exc) else EXIT_REJECTED
    return EXIT_PROTOCOL


def _terminate_on_sigterm() -> Any:
    """Let SIGTERM (cron's or timeout's kill) unwind like Ctrl-C, so that the
    connection is closed and a half-written download removed.  Returns the
    handler it replaced, or None where signals cannot be set (not the main
    thread)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(handler: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
