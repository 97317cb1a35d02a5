"""Follow a Munsit denoise job to its end over Server-Sent Events.

One file, no dependency beyond ``requests``; copy it into a project or
``pip install`` it.  Example::

    import munsit_progress

    done = munsit_progress.wait(denoise_id, on_progress=print, timeout=1800)
    print(done.url)

``wait()`` reconnects on dropped connections and returns the ``done`` event;
``iter_events()`` yields the validated events of a single connection.  Every
error raised is a :class:`MunsitError`.
"""

import codecs
import http.client
import json
import logging
import math
import os
import random
import socket
import time
import uuid
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
)
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

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
    "ErrorEvent",
    "Event",
    "JobNotFoundError",
    "MAX_LINE_BYTES",
    "MunsitError",
    "ProcessingEvent",
    "ProtocolError",
    "RetryPolicy",
    "TransportError",
    "WaitTimeoutError",
    "iter_events",
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


@dataclass(frozen=True)
class DoneEvent:
    """The job succeeded: ``url`` is where the denoised audio can be fetched."""

    stage: ClassVar[str] = "done"
    url: str
    denoise_id: str


@dataclass(frozen=True)
class ErrorEvent:
    """The job failed on the server; ``message`` says why."""

    stage: ClassVar[str] = "error"
    message: str


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
        text = "HTTP %d" % status_code
        if error_code:
            text += " [%s]" % error_code
        if error_message:
            text += ": %s" % error_message
        super().__init__(text)


class AuthenticationError(APIError):
    """HTTP 401 or 403: the API key is missing, wrong, or not allowed here."""


class JobNotFoundError(APIError):
    """HTTP 404: no denoise job has this id (for this API key)."""


class DenoiseFailedError(MunsitError):
    """Raised by :func:`wait` when the job ends with an ``error`` event."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__("denoise job failed: %s" % message)


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
        if not chunk:
            return []
        if b"\n" not in chunk and b"\r" not in chunk:
            self._hold(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        pieces = chunk.splitlines(True)
        tail = pieces[-1]
        last = tail[-1:]
        if last != b"\n" and last != b"\r":
            pieces.pop()
            self._hold(tail)
        elif last == b"\r":
            self._skip_lf = True
        limit = self._limit
        lines = []
        for piece in pieces:
            if piece[-2:] == b"\r\n":
                piece = piece[:-2]
            else:
                piece = piece[:-1]
            if len(piece) > limit:
                raise ProtocolError("a line is longer than %d bytes" % limit)
            # The SSE spec decodes as UTF-8, replacing invalid sequences.
            lines.append(piece.decode("utf-8", "replace"))
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


class _Message:
    """One dispatched SSE message: its event type, data and id."""

    __slots__ = ("event", "data", "id")

    def __init__(self, event: str, data: str, id: str) -> None:
        self.event = event
        self.data = data
        self.id = id


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

    def feed(self, line: str) -> Optional[_Message]:
        """Take one line; return a message when the line completes one."""
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment: servers send these as heartbeats
        name, colon, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self._limit:
                raise ProtocolError("an event is larger than %d bytes" % self._limit)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value and value.isdigit() and value.isascii():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Optional[_Message]:
        self.last_event_id = self._id
        if not self._data:
            self._event = ""
            return None
        message = _Message(self._event or "message", "\n".join(self._data), self._id)
        self._data = []
        self._data_size = 0
        self._event = ""
        return message


def _decode_event(message: _Message, denoise_id: str) -> Optional[Event]:
    """Validate one message as a Munsit event; ``None`` for one to skip."""
    data = message.data
    if not data.strip():
        return None  # an empty data field is a heartbeat, not JSON
    try:
        payload = json.loads(data)
    except ValueError:
        if message.event != "message":
            # A named event of some other kind, not a Munsit payload.
            logger.debug("skipping non-JSON %r event", message.event)
            return None
        raise ProtocolError("event data is not JSON: %s" % _shorten(data)) from None
    if not isinstance(payload, dict):
        raise ProtocolError("event data is not a JSON object: %s" % _shorten(data))
    stage = payload.get("stage")
    if stage is None and message.event != "message":
        stage = message.event  # the SSE event type names the stage
    if stage == "processing":
        pct = payload.get("pct")
        if (
            isinstance(pct, bool)
            or not isinstance(pct, (int, float))
            or not math.isfinite(pct)
            or not 0 <= pct <= 100
        ):
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


def _canonical_uuid(value: str) -> Optional[str]:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------
# Transport: connect, read, close.
# --------------------------------------------------------------------------


class _Target:
    """The resolved settings of one job; never shows the key in its repr."""

    __slots__ = ("denoise_id", "api_key", "base_url")

    def __init__(self, denoise_id: Any, api_key: Optional[str], base_url: Optional[str]) -> None:
        canonical = _canonical_uuid(denoise_id) if isinstance(denoise_id, str) else None
        if canonical is None:
            raise ConfigurationError("denoise_id must be a UUID, got %r" % (denoise_id,))
        if api_key is None:
            api_key = os.environ.get(_API_KEY_ENV)
        # A key read from a file or an env var often ends in a newline.
        api_key = (api_key or "").strip()
        if not api_key:
            raise ConfigurationError(
                "no API key: pass api_key= or set the %s environment variable" % _API_KEY_ENV
            )
        if not all(" " <= c <= "~" for c in api_key):
            # requests would reject it with the key itself in the message.
            raise ConfigurationError("the API key contains characters not allowed in a header")
        if base_url is None:
            base_url = os.environ.get(_BASE_URL_ENV) or DEFAULT_BASE_URL
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _remaining(deadline: Optional[float], clock: Callable[[], float]) -> Optional[float]:
    return None if deadline is None else deadline - clock()


def _bounded(timeout: float, remaining: Optional[float]) -> float:
    if remaining is None:
        return timeout
    return max(min(timeout, remaining), 0.001)


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
    url = target.progress_url
    headers = {
        "x-api-key": target.api_key,
        "Accept": "text/event-stream",
        "Cache-Control": "no-cache",
        # Only what _read_chunks can undo itself; never br or zstd.
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": "munsit-progress/%s %s" % (__version__, requests.utils.default_user_agent()),
    }
    if resume.last_event_id:
        headers["Last-Event-ID"] = resume.last_event_id
    for _ in range(_MAX_REDIRECTS + 1):
        remaining = _remaining(deadline, clock)
        if remaining is not None and remaining <= 0:
            raise WaitTimeoutError("the deadline passed before the job ended")
        timeout = (_bounded(connect_timeout, remaining), _bounded(read_timeout, remaining))
        logger.debug("GET %s", url)
        try:
            # Redirects are followed below, by hand: requests would forward
            # the x-api-key header to any host a redirect names.
            response = session.get(
                url, headers=headers, stream=True, timeout=timeout, allow_redirects=False
            )
        except requests.exceptions.RequestException as exc:
            if deadline is not None and clock() >= deadline:
                raise WaitTimeoutError("the deadline passed while connecting") from exc
            raise TransportError("cannot reach %s: %s" % (target.base_url, exc)) from exc
        status = response.status_code
        if status in _REDIRECT_STATUSES and "Location" in response.headers:
            location = urljoin(url, response.headers["Location"])
            response.close()
            if _origin(location) != _origin(url):
                scheme, host, port = _origin(location)
                raise APIError(
                    status,
                    error_message="redirected to another origin (%s://%s:%s); not followed, "
                    "so that the API key is not sent there" % (scheme, host, port),
                )
            url = location
            continue
        if status != 200:
            raise _api_error(response)
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "text/event-stream":
            response.close()
            raise ProtocolError(
                "expected Content-Type text/event-stream, got %r (is a proxy in the way?)"
                % (content_type or "nothing")
            )
        return response
    raise APIError(status, error_message="more than %d redirects" % _MAX_REDIRECTS)


def _api_error(response: requests.Response) -> APIError:
    """Turn an error response into the matching APIError, closing it."""
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
        response.close()
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
    elif status == 404:
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
    """The socket under a urllib3 response, to bound each read separately."""
    try:
        sock = raw._fp.fp.raw._sock
    except AttributeError:
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
    return sock if hasattr(sock, "settimeout") else None


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
    sock = _socket_of(response.raw) if deadline is not None else None
    while True:
        if sock is not None:
            remaining = _remaining(deadline, clock)
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError("the deadline passed before the job ended")
            sock.settimeout(_bounded(read_timeout, remaining))
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
            raise TransportError("the connection broke: %s" % (exc,)) from exc
        if not data:
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
    session: requests.Session,
    resume: _Resume,
    connect_timeout: float,
    read_timeout: float,
    deadline: Optional[float],
    clock: Callable[[], float],
) -> Iterator[Event]:
    """The events of one connection; the response is closed on every exit."""
    response = _open(target, session, resume, connect_timeout, read_timeout, deadline, clock)
    try:
        splitter = _LineSplitter()
        decoder = _SSEDecoder(resume.last_event_id)
        for chunk in _read_chunks(response, read_timeout, deadline, clock):
            for line in splitter.feed(chunk):
                message = decoder.feed(line)
                if decoder.retry is not None:
                    resume.retry_ms = decoder.retry
                if message is None:
                    continue
                resume.last_event_id = decoder.last_event_id
                event = _decode_event(message, target.denoise_id)
                if event is None:
                    continue
                if event.stage != "processing":
                    # Close before handing over the terminal event, so that a
                    # caller who keeps the generator does not keep the socket.
                    response.close()
                    yield event
                    return
                yield event
            resume.last_event_id = decoder.last_event_id
        raise TransportError("the stream ended before the job's final event")
    finally:
        response.close()


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
    return _iter_events(target, session, read_timeout, connect_timeout)


def _iter_events(
    target: _Target,
    session: Optional[requests.Session],
    read_timeout: float,
    connect_timeout: float,
) -> Iterator[Event]:
    http_session, owned = _session_or_new(session)
    try:
        for event in _events(
            target, http_session, _Resume(), connect_timeout, read_timeout, None, time.monotonic
        ):
            yield event
    finally:
        if owned:
            http_session.close()


# --------------------------------------------------------------------------
# Reconnect policy and wait()
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How :func:`wait` reconnects after a failure.

    The n-th consecutive failure waits a random time between 0 and
    ``min(backoff_max, base * 2 ** (n - 1))`` seconds ("full jitter"), where
    ``base`` is the server's ``retry:`` delay when it sent one, else
    ``backoff_base``.  A ``Retry-After`` header is obeyed as given, up to
    ``max_retry_after`` seconds; a longer one ends the wait.  After
    ``max_retries`` consecutive failures the last error is raised.  A
    connection that delivered an event resets the count.

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
        base = self.backoff_base if server_retry is None else server_retry
        ceiling = min(max(self.backoff_max, base), base * 2 ** max(failures - 1, 0))
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
    and every pause, and bounds each read, so it is never overslept.
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

    Example::

        done = wait(denoise_id, on_progress=lambda e: print(e.pct), timeout=3600)
    """
    target = _Target(denoise_id, api_key, base_url)
    policy = retry if retry is not None else RetryPolicy()
    clock = policy.clock
    deadline = None if timeout is None else clock() + timeout
    http_session, owned = _session_or_new(session)
    resume = _Resume()
    failures = 0
    try:
        while True:
            delivered = False
            try:
                events = _events(
                    target, http_session, resume, connect_timeout, read_timeout, deadline, clock
                )
                try:
                    for event in events:
                        delivered = True
                        if isinstance(event, ProcessingEvent):
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
                failures = 1 if delivered else failures + 1
                if failures > policy.max_retries:
                    raise
                _pause(exc, failures, policy, resume, deadline)
    finally:
        if owned:
            http_session.close()


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
        "reconnecting in %.2f s (attempt %d of %d): %s",
        delay,
        failures,
        policy.max_retries,
        exc,
    )
    policy.sleep(delay)
