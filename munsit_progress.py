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

import codecs
import contextlib
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
import sys
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
)
from urllib.parse import urljoin

import requests
import urllib3

if TYPE_CHECKING:  # the CLI imports argparse only when it runs
    import argparse

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigurationError",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DenoiseFailedError",
    "DoneEvent",
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
    or ``message``), else ``None``.
    """

    def __init__(
        self,
        status_code: int,
        error_code: Optional[str] = None,
        error_message: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.status_code = status_code
        self.error_code = error_code
        self.error_message = error_message
        #: Seconds the server asked us to wait (``Retry-After``), if it did.
        self.retry_after = retry_after
        self._init_args = (status_code, error_code, error_message, retry_after)
        text = "HTTP %d" % status_code
        if error_code:
            text += " [%s]" % error_code
        if error_message:
            text += ": %s" % error_message
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
        self.message = message
        super().__init__("denoise job failed: %s" % message)

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
                self.retry = int(value)


_json_decode = json.JSONDecoder().decode
# SSE event types whose data must be a Munsit JSON payload.
_JSON_EVENT_TYPES = frozenset(("message", "processing", "done", "error"))


def _decode_event(event_type: str, data: str, denoise_id: str) -> Optional[Event]:
    """Validate one message as a Munsit event; ``None`` for one to skip."""
    try:
        payload = _json_decode(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        if not data or data.isspace():
            return None  # an empty data field is a heartbeat, not JSON
        if event_type not in _JSON_EVENT_TYPES:
            # A named event of some other kind, not a Munsit payload.
            logger.debug("skipping non-JSON %r event", event_type)
            return None
        raise ProtocolError("event data is not JSON: %s" % _shorten(data)) from None
    if not isinstance(payload, dict):
        raise ProtocolError("event data is not a JSON object: %s" % _shorten(data))
    stage = payload.get("stage")
    if stage is None and event_type != "message":
        stage = event_type  # the SSE event type names the stage
    if stage == "processing":
        pct: Any = payload.get("pct")
        kind = type(pct)
        # bool is not int here; NaN and the infinities fail the range test.
        if (kind is not int and kind is not float) or not 0 <= pct <= 100:
            raise ProtocolError("processing event has an invalid pct: %s" % _shorten(data))
        text = payload.get("message")
        if text is not None and not isinstance(text, str):
            raise ProtocolError("processing event has a non-string message: %s" % _shorten(data))
        return ProcessingEvent(pct, text)
    if stage == "done":
        url = payload.get("url")
        done_id = payload.get("denoiseId")
        if not isinstance(url, str) or not url:
            raise ProtocolError("done event has no url: %s" % _shorten(data))
        if not isinstance(done_id, str) or _canonical_uuid(done_id) != denoise_id:
            raise ProtocolError(
                "done event is for another job (expected %s): %s" % (denoise_id, _shorten(data))
            )
        return DoneEvent(url, done_id)
    if stage == "error":
        text = payload.get("message")
        if not isinstance(text, str):
            raise ProtocolError("error event has no message: %s" % _shorten(data))
        return ErrorEvent(text)
    logger.warning("skipping an event of unknown stage %r", stage)
    return None


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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
# Transport: connect, read, close.
# --------------------------------------------------------------------------


class _Target:
    """The resolved settings of one job; never shows the key in its repr."""

    __slots__ = ("denoise_id", "api_key", "base_url")

    def __init__(
        self,
        denoise_id: Any,
        api_key: Optional[str],
        base_url: Optional[str],
        require_key: bool = True,
    ) -> None:
        canonical = _canonical_uuid(denoise_id) if isinstance(denoise_id, str) else None
        if canonical is None:
            raise ConfigurationError("denoise_id must be a UUID, got %r" % (denoise_id,))
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
        if base_url is None:
            base_url = os.environ.get(_BASE_URL_ENV) or DEFAULT_BASE_URL
        try:
            scheme, host, _ = _origin(base_url)
        except ValueError:
            scheme = host = ""
        if scheme not in ("http", "https") or not host:
            raise ConfigurationError("base_url must be an http(s) URL, got %r" % (base_url,))
        self.denoise_id = canonical
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return "<_Target %s at %s>" % (self.denoise_id, self.base_url)

    @property
    def progress_url(self) -> str:
        return "%s/denoise/%s/progress" % (self.base_url, self.denoise_id)


class _Resume:
    """What one connection leaves for the next: the last event id and the
    server's ``retry:`` delay."""

    __slots__ = ("last_event_id", "retry_ms")

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry_ms = None  # type: Optional[int]


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


def _deadline(timeout: Optional[float], clock: Callable[[], float]) -> Optional[float]:
    """The clock reading at which ``timeout`` seconds from now run out."""
    if timeout is None or timeout == math.inf:
        return None
    if not 0 <= timeout < math.inf:  # also NaN
        raise ConfigurationError("timeout must be a number of seconds >= 0, got %r" % timeout)
    return clock() + timeout


def _remaining(deadline: Optional[float], clock: Callable[[], float]) -> Optional[float]:
    return None if deadline is None else deadline - clock()


def _bounded(timeout: float, remaining: Optional[float]) -> float:
    if remaining is None:
        return timeout
    return max(min(timeout, remaining), 0.001)


_USER_AGENT = "munsit-progress/%s" % __version__


def _get(
    session: requests.Session,
    url: str,
    headers: Mapping[str, Union[str, bytes]],
    target: _Target,
    connect_timeout: float,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
    leave_origin: bool,
) -> requests.Response:
    """GET ``url`` as a stream, following redirects by hand.

    requests would forward the custom x-api-key header to any host a redirect
    names, so the key is added here, to requests for the API's own origin
    only.  A redirect to another origin raises, unless ``leave_origin``.
    """
    api_origin = _origin(target.base_url)
    try:
        _origin(url)
    except ValueError:
        raise ProtocolError("malformed URL: %s" % _shorten(url, 100)) from None
    status = 0
    for _ in range(_MAX_REDIRECTS + 1):
        remaining = _remaining(deadline, clock)
        if remaining is not None and remaining <= 0:
            raise WaitTimeoutError("the deadline passed before the job ended")
        timeout = (_bounded(connect_timeout, remaining), _bounded(read_timeout, remaining))
        sent = dict(headers)
        if target.api_key and _origin(url) == api_origin:
            sent["x-api-key"] = target.api_key
        logger.debug("GET %s", url)
        try:
            response = session.get(
                url, headers=sent, stream=True, timeout=timeout, allow_redirects=False
            )
        except requests.exceptions.RequestException as exc:
            if deadline is not None and clock() >= deadline:
                raise WaitTimeoutError("the deadline passed while connecting") from exc
            raise TransportError("cannot reach %s: %s" % (_origin_text(url), _reason(exc))) from exc
        if deadline is not None:
            if clock() >= deadline:
                _close(response)
                raise WaitTimeoutError("the deadline passed while waiting for the response")
            _watch(response, deadline - clock())
        status = response.status_code
        if status not in _REDIRECT_STATUSES or "Location" not in response.headers:
            return response
        _close(response)
        try:
            location = urljoin(url, response.headers["Location"])
            foreign = _origin(location) != api_origin
        except ValueError:
            raise ProtocolError("redirected to a malformed URL") from None
        if foreign and not leave_origin:
            raise APIError(
                status,
                error_message="redirected to another origin (%s); not followed, so that "
                "the API key is not sent there" % _origin_text(location),
            )
        url = location
    raise APIError(status, error_message="more than %d redirects" % _MAX_REDIRECTS)


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
    return re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", str(exc)) or type(exc).__name__


def _watch(response: requests.Response, seconds: float) -> None:
    """Cut the response's connection after ``seconds``.

    Socket timeouts bound each receive, not their sum: a server trickling a
    byte at a time could otherwise hold a read past the deadline.
    """
    sock = _socket_of(response.raw)
    if sock is None:
        return
    timer = threading.Timer(seconds, _cut, (sock,))
    timer.daemon = True
    timer.start()
    setattr(response, "_munsit_watchdog", timer)  # noqa: B010 (requests' class)


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def _close(response: requests.Response) -> None:
    """Close the response and stop its deadline watchdog."""
    timer = getattr(response, "_munsit_watchdog", None)
    if timer is not None:
        timer.cancel()
    response.close()


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return "%s://%s:%s" % (scheme, host, port)


def _open(
    target: _Target,
    session: requests.Session,
    resume: _Resume,
    connect_timeout: float,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
) -> requests.Response:
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
        headers["Last-Event-ID"] = last_id.encode("utf-8")
    response = _get(
        session,
        target.progress_url,
        headers,
        target,
        connect_timeout,
        read_timeout,
        deadline,
        clock,
        leave_origin=False,
    )
    if response.status_code != 200:
        raise _api_error(response)
    content_type = response.headers.get("Content-Type", "")
    if content_type.split(";")[0].strip().lower() != "text/event-stream":
        _close(response)
        raise ProtocolError(
            "expected Content-Type text/event-stream, got %r (is a proxy in the way?)"
            % (content_type or "nothing")
        )
    return response


def _api_error(response: requests.Response, for_job: bool = True) -> APIError:
    """Turn an error response into the matching APIError, closing it.

    A 404 means "no such job" only for the job's own endpoints."""
    status = response.status_code
    body = b""
    try:
        for piece in response.iter_content(8192):
            body += piece
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except Exception:  # the body is a courtesy; the status says enough
        pass
    finally:
        _close(response)
    code = text = None
    try:
        payload = json.loads(body.decode("utf-8", "replace"))
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        if payload.get("errorCode") is not None:
            code = str(payload["errorCode"])
        for key in ("errorMessage", "message", "error"):
            if isinstance(payload.get(key), str):
                text = payload[key]
                break
    if text is None:
        text = response.reason or None
    retry_after = _parse_retry_after(response.headers.get("Retry-After"))
    cls = APIError
    if status in (401, 403):
        cls = AuthenticationError
    elif status == 404 and for_job:
        cls = JobNotFoundError
    return cls(status, code, text, retry_after)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _socket_of(raw: Any) -> Optional[socket.socket]:
    """The socket under a urllib3 response, for the deadline watchdog."""
    try:
        sock = raw._fp.fp.raw._sock
    except AttributeError:
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
    return sock if hasattr(sock, "shutdown") else None


def _content_decoder(encoding: str) -> Optional[Any]:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _DeflateDecoder()
    raise ProtocolError("unsupported Content-Encoding %r" % encoding)


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


def _raw_chunks(response: requests.Response) -> Tuple[Callable[[], bytes], bool]:
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
        return lambda: raw.read1(_READ_SIZE, decode_content=True), True
    stream = raw.stream(_READ_SIZE, decode_content=True)
    return lambda: next(stream, b""), True


def _read_chunks(
    response: requests.Response,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
) -> Iterator[bytes]:
    """Yield the decoded body as it arrives; raise TransportError on a stall,
    a reset or a truncated body, WaitTimeoutError at the deadline."""
    read, decoded = _raw_chunks(response)
    decoder = None if decoded else _content_decoder(response.headers.get("Content-Encoding", ""))
    while True:
        # A read cannot outlast the deadline either: _get set a watchdog.
        if deadline is not None and clock() >= deadline:
            raise WaitTimeoutError("the deadline passed before the job ended")
        try:
            data = read()
        except (socket.timeout, urllib3.exceptions.ReadTimeoutError) as exc:
            if deadline is not None and clock() >= deadline:
                raise WaitTimeoutError("the deadline passed before the job ended") from exc
            raise TransportError(
                "no data for %g seconds: the connection stalled" % read_timeout
            ) from exc
        except (
            OSError,
            http.client.HTTPException,
            urllib3.exceptions.HTTPError,
            requests.exceptions.RequestException,
        ) as exc:
            if deadline is not None and clock() >= deadline:  # the watchdog cut it
                raise WaitTimeoutError("the deadline passed before the job ended") from exc
            if isinstance(exc, http.client.IncompleteRead):
                raise TransportError("the server cut the stream short") from exc
            raise TransportError("the connection broke: %s" % (exc,)) from exc
        if not data:
            if deadline is not None and clock() >= deadline:  # the watchdog cut it
                raise WaitTimeoutError("the deadline passed before the job ended")
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


def _events(
    target: _Target,
    session: Optional[requests.Session],
    resume: _Resume,
    connect_timeout: float,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
) -> Generator[Event, None, None]:
    """The events of one connection; the response is closed on every exit,
    and so is the session if none was given."""
    http_session, owned = _session_or_new(session)
    try:
        response = _open(
            target, http_session, resume, connect_timeout, read_timeout, deadline, clock
        )
    except BaseException:
        if owned:
            http_session.close()
        raise
    try:
        splitter = _LineSplitter()
        decoder = _SSEDecoder(resume.last_event_id)
        denoise_id = target.denoise_id
        for chunk in _read_chunks(response, read_timeout, deadline, clock):
            lines = splitter.feed(chunk)
            if not lines:
                continue
            messages = decoder.feed(lines)
            resume.last_event_id = decoder.last_event_id
            if decoder.retry is not None:
                resume.retry_ms = decoder.retry
            for event_type, data, _ in messages:
                event = _decode_event(event_type, data, denoise_id)
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
        if owned:
            http_session.close()


def _session_or_new(session: Optional[requests.Session]) -> Tuple[requests.Session, bool]:
    if session is not None:
        return session, False
    return requests.Session(), True


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
    target = _Target(denoise_id, api_key, base_url)
    return _events(target, session, _Resume(), connect_timeout, read_timeout, None, time.monotonic)


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
    target = _Target(denoise_id, api_key, base_url)
    policy = retry if retry is not None else RetryPolicy()
    deadline = _deadline(timeout, policy.clock)
    http_session, owned = _session_or_new(session)
    finish = getattr(on_progress, "finish", None)
    try:
        done = _follow(
            target, http_session, on_progress, policy, deadline, read_timeout, connect_timeout
        )
    except BaseException as exc:
        if finish is not None:
            finish(exc)
        raise
    finally:
        if owned:
            http_session.close()
    if finish is not None:
        finish(done)
    return done


def _follow(
    target: _Target,
    http_session: requests.Session,
    on_progress: Optional[Callable[[ProcessingEvent], Any]],
    policy: RetryPolicy,
    deadline: Optional[float],
    read_timeout: float,
    connect_timeout: float,
) -> DoneEvent:
    """wait()'s loop: connect, read, and reconnect until a terminal event."""
    clock = policy.clock
    resume = _Resume()
    failures = 0
    seen: Set[ProcessingEvent] = set()
    while True:
        advanced = False
        try:
            events = _events(
                target, http_session, resume, connect_timeout, read_timeout, deadline, clock
            )
            try:
                for event in events:
                    if isinstance(event, ProcessingEvent):
                        # Only news counts as progress: a server that replays
                        # the same event and drops again must not loop forever.
                        if event not in seen:
                            seen.add(event)
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
            _pause(exc, failures, policy, resume, deadline)


def _pause(
    exc: MunsitError,
    failures: int,
    policy: RetryPolicy,
    resume: _Resume,
    deadline: Optional[float],
) -> None:
    """Sleep before the next attempt, or raise if that would pass a limit."""
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None and retry_after > policy.max_retry_after:
        raise exc
    server_retry = None if resume.retry_ms is None else resume.retry_ms / 1000.0
    delay = policy.delay(failures, retry_after, server_retry)
    remaining = _remaining(deadline, policy.clock)
    if remaining is not None and delay >= remaining:
        raise WaitTimeoutError(
            "the deadline would pass before the next attempt (in %.1f s) after: %s" % (delay, exc)
        ) from exc
    logger.log(
        logging.INFO if failures == 1 else logging.WARNING,
        "reconnecting in %.2f s (retry %d of %d): %s",
        delay,
        failures,
        policy.max_retries,
        exc,
    )
    policy.sleep(delay)


# --------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------


class ProgressBar:
    """A ready-made ``on_progress`` display for terminals, logs and notebooks.

    ::

        done = wait(denoise_id, on_progress=ProgressBar())

    - On a terminal: one line updated in place (bar, percent, message,
      elapsed time), ended with a newline when the job ends.
    - Not a terminal (cron, a file, a pipe): no carriage returns; one
      timestamped line for each new message or 10-percent step, and one for
      the result.
    - In Jupyter: one display, updated in place (IPython's own display; no
      other dependency).

    ``stream`` defaults to ``sys.stderr`` (looked up when needed); ``mode``
    forces ``"terminal"``, ``"log"`` or ``"notebook"`` instead of guessing.
    :func:`wait` calls :meth:`finish` with the outcome; so does leaving a
    ``with ProgressBar() as bar:`` block.  Control characters in server
    messages are shown as spaces, so a message cannot forge log lines.
    """

    _MODES = ("terminal", "log", "notebook")

    def __init__(self, stream: Optional[TextIO] = None, *, mode: Optional[str] = None) -> None:
        if mode is not None and mode not in self._MODES:
            raise ConfigurationError("mode must be one of %s" % ", ".join(self._MODES))
        self._stream = stream
        self._mode = mode
        self._pct = 0.0
        self._message = None  # type: Optional[str]
        self._line_width = 0  # terminal columns of the in-place line now shown
        self._shown = None  # type: Optional[Tuple[str, str]]
        self._handle = None  # type: Any
        self._restart()

    def _restart(self) -> None:
        """Start a new display (a new job, or a download after the job)."""
        self._started = time.monotonic()
        self._finished = False
        self._logged_step = -1
        self._logged_message = None  # type: Optional[str]
        self._last_draw = 0.0

    @property
    def mode(self) -> str:
        """The display in use: "terminal", "log" or "notebook"."""
        if self._mode is None:
            if self._stream is None and _notebook_kernel():
                self._mode = "notebook"
            else:
                isatty = getattr(self._out(), "isatty", None)
                self._mode = "terminal" if isatty is not None and isatty() else "log"
        return self._mode

    def __call__(self, event: ProcessingEvent) -> None:
        """Show one processing event."""
        if self._finished:
            self._restart()
        message = _printable(event.message) if event.message else None
        changed = message != self._message
        self._pct = float(event.pct)
        self._message = message
        text = "%3d%%" % int(self._pct) + ("  " + message if message else "")
        now = time.monotonic()
        if self.mode == "log":
            step = int(self._pct // 10)
            if step > self._logged_step or (message and message != self._logged_message):
                self._logged_step = step
                self._logged_message = message
                self._log_line(text)
        elif changed or now - self._last_draw >= 0.1 or self._pct >= 100:
            # Redrawing at most ten times a second keeps a chatty stream cheap.
            self._last_draw = now
            self._show(self._bar(self._pct), text)

    def transfer(self, received: int, total: Optional[int]) -> None:
        """Show a download's progress: ``received`` of ``total`` bytes."""
        if self._finished:
            self._restart()
        pct = 100.0 * received / total if total else None
        text = "downloading %s" % _size(received)
        if total:
            text += " of %s" % _size(total)
            self._pct = pct or 0.0
        now = time.monotonic()
        if self.mode == "log":
            step = int(pct // 10) if pct is not None else received // (10 * 1024 * 1024)
            if step > self._logged_step:
                self._logged_step = step
                self._log_line(text)
        elif now - self._last_draw >= 0.1 or received == total:
            self._last_draw = now
            self._show(self._bar(pct), text)

    def finish(self, outcome: Union[DoneEvent, BaseException, str, None] = None) -> None:
        """End the display with the outcome: a :class:`DoneEvent`, an
        exception, a line of text, or ``None`` to just end the line."""
        if self._finished:
            return
        self._finished = True
        mode = self.mode
        link = None
        if isinstance(outcome, DoneEvent):
            self._pct = 100.0
            link = outcome.url
            # On a terminal the URL follows on stdout; a log line carries it.
            text = "100%  done" if mode == "terminal" else "done: %s" % link
            bar = self._bar(100.0)
        elif isinstance(outcome, DenoiseFailedError):
            text = "failed: %s" % _printable(outcome.message)
            bar = self._bar(self._pct)
        elif isinstance(outcome, KeyboardInterrupt):
            text, bar = "stopped: interrupted", self._bar(self._pct)
        elif isinstance(outcome, BaseException):
            text, bar = "stopped: %s" % (outcome or type(outcome).__name__), self._bar(self._pct)
        else:
            text, bar = outcome or "", ""
        if mode == "log":
            if text:
                self._log_line(text)
        elif mode == "notebook":
            self._show(bar, text, link=link)
        else:
            if text:
                self._show(bar, text, elapsed=bar != "")
            if self._line_width:
                self._write("\n")
                self._line_width = 0
            self._shown = None

    def note(self, text: str) -> None:
        """Show a line of text (a warning, say) without garbling the display."""
        mode = self.mode
        if mode == "log":
            self._log_line(text)
        elif mode == "notebook":
            self._show("", text)
        else:
            shown = self._line_width
            self._write(("\r" + " " * shown + "\r" if shown else "") + text + "\n")
            self._line_width = 0
            if shown and self._shown is not None:
                self._show(*self._shown)  # put the bar back under the note

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.finish(exc)

    # -- rendering --

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _elapsed(self) -> str:
        return "%d:%02d" % divmod(int(time.monotonic() - self._started), 60)

    def _bar(self, pct: Optional[float], width: int = 24) -> str:
        if pct is None:
            return ""
        filled = int(round(width * min(max(pct, 0.0), 100.0) / 100.0))
        full, empty = ("\u2588", "\u2591") if self._unicode_ok() else ("#", "-")
        return "[%s%s]" % (full * filled, empty * (width - filled))

    def _unicode_ok(self) -> bool:
        encoding = getattr(self._out(), "encoding", None) or ""
        return encoding.lower().replace("-", "").startswith("utf")

    def _show(self, bar: str, text: str, elapsed: bool = True, link: Optional[str] = None) -> None:
        if self.mode == "notebook":
            self._show_notebook(bar, text, link)
            return
        self._shown = (bar, text)
        line = self._encodable("%s %s" % (bar, text) if bar else text)
        tail = "  " + self._elapsed() if elapsed else ""
        # The message is what gets cut, not the elapsed time after it.
        line, width = _fit(line, self._columns() - 1 - len(tail))
        line += tail
        width += len(tail)
        padding = " " * max(self._line_width - width, 0)
        self._line_width = width
        self._write("\r" + line + padding)

    def _columns(self) -> int:
        # The stream's own terminal: stdout may well be a pipe ($(...)).
        try:
            columns = os.get_terminal_size(self._out().fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a real terminal
            columns = 0
        # 0 is what a terminal that never set its size reports.
        return columns or shutil.get_terminal_size((80, 24)).columns

    def _log_line(self, text: str) -> None:
        self._write("%s munsit: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), text))

    def _encodable(self, text: str) -> str:
        """``text`` with what the stream cannot encode replaced by ``?``."""
        if self._unicode_ok():
            return text
        encoding = getattr(self._out(), "encoding", None) or "ascii"
        return text.encode(encoding, "replace").decode(encoding)

    def _write(self, text: str) -> None:
        out = self._out()
        out.write(self._encodable(text))
        flush = getattr(out, "flush", None)
        if flush is not None:
            flush()

    def _show_notebook(self, bar: str, text: str, link: Optional[str]) -> None:
        import html

        try:
            display = importlib.import_module("IPython.display").display
        except ImportError:  # mode="notebook" forced outside IPython
            self._mode = "log"
            self._log_line(text)
            return
        if link is not None:
            body = 'done: <a href="%s" target="_blank">%s</a>' % (
                html.escape(link, quote=True),
                html.escape(link),
            )
        else:
            body = '<span dir="auto">%s</span>' % html.escape(text)
        markup = (
            '<div style="font-family: monospace">'
            '<progress value="%.1f" max="100" style="width: 16em; vertical-align: middle">'
            '</progress> %s <span style="color: gray">%s</span></div>'
            % (self._pct, body, html.escape(self._elapsed()))
        )
        bundle = {"text/plain": "%s %s  %s" % (bar, text, self._elapsed()), "text/html": markup}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def _printable(text: str) -> str:
    """``text`` with control characters (newlines, escapes) made spaces."""
    if text.isprintable():
        return text
    import unicodedata

    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)


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
    on_progress: Optional[Callable[[int, Optional[int]], Any]] = None,
) -> str:
    """Save the denoised audio of ``done`` to ``path``; return the path.

    The file is streamed to disk and written atomically: bytes go to a
    temporary file in the same folder, renamed to ``path`` only when the
    whole body has arrived, so a failure or Ctrl-C leaves nothing at
    ``path`` (and an earlier file there untouched).  The API key is sent only
    if the result lives at the API's own origin, never to a CDN or a host a
    redirect names.  ``on_progress(received, total)`` is called as bytes
    arrive (``total`` is ``None`` when the size is unknown); a
    :class:`ProgressBar`'s ``transfer`` method fits.  ``timeout`` is an
    overall deadline in seconds.

    Raises :class:`APIError` for an HTTP error, :class:`TransportError` for
    a broken or short transfer, :class:`WaitTimeoutError` at the deadline,
    ``OSError`` if the file cannot be written.
    """
    target = _Target(done.denoise_id, api_key, base_url, require_key=False)
    clock = time.monotonic
    deadline = _deadline(timeout, clock)
    http_session, owned = _session_or_new(session)
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, ".%s.%s.part" % (os.path.basename(path), os.urandom(4).hex()))
    try:
        response = _get(
            http_session,
            done.url,
            # Audio barely compresses, and a plain body's length can be checked.
            {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
            target,
            connect_timeout,
            read_timeout,
            deadline,
            clock,
            leave_origin=True,
        )
        try:
            if response.status_code != 200:
                raise _api_error(response, for_job=False)
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() and encoding == "identity" else None
            received = 0
            try:
                out = open(temporary, "xb")
            except OSError as exc:
                raise OSError(exc.errno, "cannot write %s: %s" % (path, exc.strerror)) from exc
            with out:
                for chunk in _read_chunks(response, read_timeout, deadline, clock):
                    out.write(chunk)
                    received += len(chunk)
                    if on_progress is not None:
                        on_progress(received, total)
                if total is not None and received != total:
                    raise TransportError(
                        "the download ended after %d of %d bytes" % (received, total)
                    )
                out.flush()
                os.fsync(out.fileno())
        finally:
            _close(response)
        os.replace(temporary, path)
        return path
    except WaitTimeoutError as exc:
        raise WaitTimeoutError("the deadline passed before the download finished") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if owned:
            http_session.close()


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

_EPILOG = (
    """\
exit status:
  0    the job is done (its result URL is on stdout)
  1    the job failed (the server sent an error event)
  2    usage or configuration error (bad id, no API key, bad option)
  3    the API refused the request (401/403: key; 404: no such job; other 4xx)
  4    gave up: the deadline passed, the connection kept failing, or the
       download could not be written; worth trying again later
  5    the server sent something this client cannot read
  130  interrupted (Ctrl-C or SIGTERM); no partial download is left

environment:
  MUNSIT_API_KEY   the API key (or use --api-key-file)
  MUNSIT_BASE_URL  the API's address (default %s)

examples:
  munsit-progress --demo                    # a simulated job, no key needed
  munsit-progress 5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1 -o clean.wav
  munsit-progress --json --quiet ID | jq .pct
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
        "-o", "--output", metavar="FILE", help="when done, download the denoised audio to FILE"
    )
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
        "--json", action="store_true", help="write each event to stdout as one JSON object per line"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="show no progress on stderr")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log the connection's details and show tracebacks",
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
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
        )
    bar = None if args.quiet else ProgressBar()
    previous_sigterm = _terminate_on_sigterm()
    handler = None
    previous_level = logger.level
    if not args.verbose:
        # Reconnections and warnings, shown through the display.
        handler = _NoteHandler(bar)
        handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > handler.level:
            logger.setLevel(handler.level)
    try:
        if args.denoise_id is not None and _canonical_uuid(args.denoise_id) is None:
            raise ConfigurationError("DENOISE_ID must be a UUID, got %r" % args.denoise_id)
        if args.output is not None:
            _check_writable(args.output)
        if demo:
            with demo_server(fail=args.demo_fail) as base_url:
                job = args.denoise_id or _random_uuid()
                _note(args, "demo: simulated job %s (local server, no key)" % job)
                return _run(args, job, "demo", base_url, bar)
        api_key = _read_key(args.api_key_file)
        if not (api_key or os.environ.get(_API_KEY_ENV) or "").strip():
            raise ConfigurationError("no API key: set %s or use --api-key-file PATH" % _API_KEY_ENV)
        return _run(args, args.denoise_id, api_key, args.base_url, bar)
    except KeyboardInterrupt:
        _end_display(bar)
        _complain(args, "interrupted")
        return EXIT_INTERRUPTED
    except MunsitError as exc:
        _end_display(bar)
        _complain(args, str(exc))
        return _exit_status(exc)
    except OSError as exc:  # writing the output file
        _end_display(bar)
        _complain(args, str(exc))
        return EXIT_GAVE_UP
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous_level)
        if previous_sigterm is not None:
            _restore_sigterm(previous_sigterm)


def _usage(parser: "argparse.ArgumentParser", text: str) -> int:
    parser.print_usage(sys.stderr)
    print("munsit-progress: error: %s" % text, file=sys.stderr, flush=True)
    return EXIT_USAGE


def _end_display(bar: Optional[ProgressBar]) -> None:
    """End the progress line; the error line that follows says the rest."""
    if bar is not None:
        bar.finish(None)


def _check_writable(path: str) -> None:
    """Refuse an --output that cannot be written before a long wait, not after."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigurationError("cannot write %s: no folder %s" % (path, folder))
    if not os.access(folder, os.W_OK):
        raise ConfigurationError("cannot write %s: the folder is not writable" % path)
    if os.path.isdir(path):
        raise ConfigurationError("cannot write %s: it is a folder" % path)


class _NoteHandler(logging.Handler):
    """The command line's log handler: one line on stderr per record."""

    def __init__(self, bar: Optional[ProgressBar]) -> None:
        super().__init__()
        self._bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if self._bar is None:
            print("munsit-progress: " + text, file=sys.stderr, flush=True)
        elif self._bar.mode == "log":
            self._bar.note(text)  # the log line carries its own prefix
        else:
            self._bar.note("munsit-progress: " + text)


def _run(
    args: Any,
    job: str,
    api_key: Optional[str],
    base_url: Optional[str],
    bar: Optional[ProgressBar],
) -> int:
    started = time.monotonic()

    def on_progress(event: ProcessingEvent) -> None:
        if args.json:
            _print_json(event)
        if bar is not None:
            bar(event)

    try:
        done = wait(
            job, on_progress=on_progress, timeout=args.timeout, api_key=api_key, base_url=base_url
        )
    except DenoiseFailedError as exc:
        if args.json:
            _print_json(ErrorEvent(exc.message))
        raise
    if bar is not None:
        bar.finish(done)
    if args.json:
        _print_json(done)
    else:
        _print_line(done.url)
    if args.output is not None:
        remaining = None if args.timeout is None else args.timeout - (time.monotonic() - started)
        download(
            done,
            args.output,
            api_key=api_key,
            base_url=base_url,
            timeout=remaining,
            on_progress=bar.transfer if bar is not None else None,
        )
        if bar is not None:
            bar.finish("saved %s" % args.output)
    return EXIT_OK


def _read_key(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    try:
        if path == "-":
            if sys.stdin is None:
                raise ConfigurationError("--api-key-file -: there is no standard input")
            return sys.stdin.readline()
        with open(path, encoding="utf-8") as handle:
            return handle.readline()
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


def _print_json(event: Event) -> None:
    _print_line(json.dumps(event.to_dict()))


def _print_line(text: str) -> None:
    """A line on stdout, even one it cannot encode (a URL: percent-encoded)."""
    try:
        print(text, flush=True)
    except UnicodeEncodeError:
        print(requests.utils.requote_uri(text).encode("ascii", "replace").decode(), flush=True)


def _note(args: Any, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def _complain(args: Any, text: str) -> None:
    if args.verbose:
        import traceback

        traceback.print_exc()
    print("munsit-progress: error: %s" % text, file=sys.stderr, flush=True)


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
