"""Take audio through Munsit's denoise API: upload, follow, save.

One file, no dependency beyond ``requests``; copy it into a project or
``pip install`` it.  Example::

    import munsit_progress

    with munsit_progress.Client() as client:  # the key from $MUNSIT_API_KEY
        done = client.denoise("in.wav", "clean.wav", timeout=3600,
                              on_progress=munsit_progress.ProgressBar())
    print(done.url)

A :class:`Client` is configured once (key, base URL, timeouts, retry
policy) and keeps one connection pool; it is safe to share between
threads.  ``denoise()`` uploads a file, follows its job and saves the
result under one deadline; ``denoise_many()`` does it for a folder of
files, resumably, with a journal; ``submit()`` uploads (streamed, never
paid for twice: every job is known by a tag of its content in the uploaded
name, and a job the account already has for that content is adopted, not
paid for again), ``list_jobs()`` lists the account's jobs, ``wait()``
follows a job across reconnections, ``iter_events()`` yields the validated
events of a single connection, ``download()`` saves a result, resuming a
broken transfer.  Each is a method of :class:`Client` and a module
function of the same name that makes a client for one call.
``ProgressBar()`` shows a job's upload, processing and download in a
terminal, a log or a notebook.  Every error raised is a
:class:`MunsitError`.  From a shell: ``python munsit_progress.py --help``
(``--demo`` runs against a local simulator, no key needed).
"""

import sys

if sys.version_info < (3, 7):  # noqa: UP036 (a copied file may meet an old Python)
    _TOO_OLD = "munsit_progress needs Python 3.7 or newer (this is %d.%d)" % sys.version_info[:2]
    if __name__ == "__main__":
        sys.exit(_TOO_OLD)
    raise ImportError(_TOO_OLD)

import codecs
import contextlib
import dataclasses
import errno
import functools
import http.client
import importlib
import io
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
import types
import zlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    FrozenSet,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    NoReturn,
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

__version__ = "0.8.0"

__all__ = [
    "APIError",
    "AuthenticationError",
    "BatchBusyError",
    "CertificateError",
    "Client",
    "ConfigurationError",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HORIZON",
    "DEFAULT_MAX_DOWNLOAD",
    "DEFAULT_READ_TIMEOUT",
    "DenoiseFailedError",
    "DoneEvent",
    "EXIT_BROKEN_PIPE",
    "EXIT_BUSY",
    "EXIT_CERTIFICATE",
    "EXIT_GAVE_UP",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_OK",
    "EXIT_PROTOCOL",
    "EXIT_REJECTED",
    "EXIT_UNSURE",
    "EXIT_USAGE",
    "ErrorEvent",
    "FileResult",
    "Event",
    "JOURNAL_NAME",
    "JobNotFoundError",
    "JobRecord",
    "MAX_AUDIO_SECONDS",
    "MAX_LINE_BYTES",
    "MAX_UPLOAD_BYTES",
    "MunsitError",
    "NotSubmittedError",
    "PaymentRequiredError",
    "ProcessingEvent",
    "ProgressBar",
    "ProtocolError",
    "ProxyAuthenticationError",
    "ProxyError",
    "RetryPolicy",
    "SaveError",
    "Submission",
    "SubmissionUnknownError",
    "TransportError",
    "WaitTimeoutError",
    "demo_server",
    "denoise",
    "denoise_many",
    "download",
    "iter_events",
    "list_jobs",
    "content_tag",
    "main",
    "submit",
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

#: How far back, in seconds, the look before an upload reads the account's
#: jobs (7 days): a rerun after a weekend, or a task engine's late retry,
#: still finds its job, and a busy account's older history is never read.
DEFAULT_HORIZON = 7 * 86400.0

#: The largest result :func:`download` accepts unless told otherwise (2 GiB).
#: Fifteen minutes of 96 kHz stereo 32-bit audio is about 700 MB.
DEFAULT_MAX_DOWNLOAD = 2 * 1024**3

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


class _Regex:
    """A regular expression compiled when it is first used: a module-level
    re.compile() is paid by every import, and most runs use few of them."""

    def __init__(self, pattern: Any, flags: int = 0) -> None:
        self._pattern = pattern
        self._flags = flags

    def __getattr__(self, name: str) -> Any:
        # Reached only until the first use: the compiled pattern's methods
        # then sit on the instance, found as fast as a compiled pattern's.
        compiled = re.compile(self._pattern, self._flags)
        for method in ("match", "fullmatch", "search", "split", "sub"):
            setattr(self, method, getattr(compiled, method))
        return getattr(compiled, name)


_LINE_END = _Regex("\r\n|\r|\n")
_BYTE_LINE_END = _Regex(b"\r\n|\r|\n")

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


@dataclass(frozen=True)
class Submission:
    """A file's job, from :func:`submit`: the job's ``denoise_id`` (a
    canonical UUID, to follow with :func:`wait`), the ``job_id`` the server
    also sent (it mirrors the denoise id), the ``file_name`` the job was
    sent under (with the content tag) and the file's ``size`` in bytes.
    ``adopted`` is true when the account had this content's job already,
    so that nothing was sent (or paid for) by this call."""

    denoise_id: str
    job_id: str
    file_name: str
    size: int
    adopted: bool = False


@dataclass(frozen=True)
class JobRecord:
    """One job of the account, as :func:`list_jobs` returns it.

    ``status`` is "pending", "success" or "failed" (kept as sent should the
    API add others); ``audio_url`` is the result, once there is one;
    ``audio_size`` (bytes) and ``audio_duration`` (seconds) describe the
    uploaded source; ``source_type`` is "audio" or "video"; ``error`` says
    why a job failed; ``created_at`` and ``updated_at`` are ISO 8601 strings
    as the server sent them.  Fields the server left out are ``None``.
    """

    denoise_id: str
    status: str
    audio_url: Optional[str] = None
    file_name: Optional[str] = None
    audio_size: Optional[int] = None
    audio_duration: Optional[float] = None
    source_type: Optional[str] = None
    error: Optional[str] = None
    created_at: Optional[str] = None
    updated_at: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The record with the API's own field names (JSON-ready)."""
        out = {"id": self.denoise_id}  # type: Dict[str, Any]
        for name in _RECORD_FIELDS:
            out[name] = getattr(self, name)
        return out


_RECORD_FIELDS = (
    "status",
    "audio_url",
    "file_name",
    "audio_size",
    "audio_duration",
    "source_type",
    "error",
    "created_at",
    "updated_at",
)


# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


class MunsitError(Exception):
    """Base of every error this module raises.

    ``denoise_id`` is the job the error concerns once the server has taken
    the file (or a job was found for it, or :func:`wait` was following
    it): the job exists, and is paid for; follow it with
    ``wait(denoise_id)`` or ``munsit-progress DENOISE_ID``, or run the same
    call again (it finds the job by the file's content), rather than
    sending the file as new.  ``None`` otherwise.  A job that failed on
    the server (:class:`DenoiseFailedError`) is the exception: following
    it only replays its error; ``retry_failed=True`` sends the file again.
    """

    denoise_id = None  # type: Optional[str]
    # False when the caller named the job itself (wait()): the note would
    # only repeat what it knows.
    _job_noted = True

    def __str__(self) -> str:
        text = super().__str__()
        if self.denoise_id and self._job_noted:
            text += " [%s]" % self._job_note(self.denoise_id)
        return text

    def _job_note(self, job: str) -> str:
        return "job %s exists and is paid for: follow it, do not send the file as new" % job


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
        return (type(self), self._init_args, self.__dict__)


class AuthenticationError(APIError):
    """HTTP 401 or 403: the API key is missing, wrong, or not allowed here."""


class PaymentRequiredError(APIError):
    """HTTP 402: the account's wallet cannot pay for the job."""


class JobNotFoundError(APIError):
    """HTTP 404: no denoise job has this id (for this API key)."""


class DenoiseFailedError(MunsitError):
    """Raised by :func:`wait` when the job ends with an ``error`` event."""

    def __init__(self, message: str) -> None:
        message = _redact(message)
        self.message = message
        super().__init__("denoise job failed: %s" % _clean(message))

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), (self.message,), self.__dict__)

    def _job_note(self, job: str) -> str:
        return (
            "job %s failed on the server: following it again only replays this error; "
            "retry_failed=True sends the file again, as a new job" % job
        )


class ProtocolError(MunsitError):
    """The server sent something this client cannot accept: a Content-Type
    other than ``text/event-stream``, malformed JSON, an invalid event, or a
    line or event larger than :data:`MAX_LINE_BYTES`."""


class TransportError(MunsitError):
    """The connection failed, was reset, was cut short before the terminal
    event, or went silent for longer than the read timeout.  The underlying
    exception is kept as ``__cause__``."""


class ProxyError(TransportError):
    """The proxy (``HTTPS_PROXY``, ``HTTP_PROXY`` or the session's
    ``proxies``) could not be reached, did not answer, or would not connect
    to the API.  ``proxy`` names it as ``scheme://host:port``, never with its
    password."""

    def __init__(self, message: str, proxy: Optional[str] = None) -> None:
        super().__init__(message)
        self.proxy = proxy

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), self.args, self.__dict__)


class ProxyAuthenticationError(ProxyError):
    """The proxy refused its login (HTTP 407): the user name or password in
    the proxy URL is wrong, or missing.  Never retried: each attempt is a
    failed login at the company's directory, and enough of them lock the
    account."""


class CertificateError(TransportError):
    """A TLS certificate (the API's, a download's or an https proxy's) could
    not be verified.  A setting to fix, not a failure to wait out: never
    retried.  A certificate from a private CA is trusted by pointing
    ``REQUESTS_CA_BUNDLE`` at that CA's PEM file, or by passing a session
    whose ``verify`` names it."""


class _Aborted(TransportError):
    """A batch's worker was stopped (Ctrl-C, SIGTERM): never retried, and
    never shown to a caller, who gets the KeyboardInterrupt."""


class _StoppedWhileFollowed(TransportError):
    """A batch was stopped (Ctrl-C, SIGTERM) while this input's job was
    followed: the job goes on on the server, and a rerun follows it."""


class SaveError(MunsitError, OSError):
    """The result could not be written: a full disk, a folder removed, a
    permission refused.  The job succeeded and is paid for: ``denoise_id``
    names it, and a rerun (or :func:`download` of its done event) fetches
    the result again without sending the file.  ``errno`` is the operating
    system's error number, as on any ``OSError``."""

    def __reduce__(self) -> Tuple[Any, ...]:
        return (type(self), self.args, self.__dict__)

    def _job_note(self, job: str) -> str:
        return "job %s is done and paid for: run again to fetch its result" % job


class BatchBusyError(MunsitError):
    """Another run holds the output folder's journal (an overlapping cron
    job): nothing was done.  Exit status 7."""


class NotSubmittedError(MunsitError):
    """The file was not sent in this run: a cap (``max_files``,
    ``max_bytes``) was reached, or the run was stopped first.  A later run
    sends it."""


class WaitTimeoutError(MunsitError, TimeoutError):
    """The overall ``timeout`` passed before the call was done."""


class SubmissionUnknownError(MunsitError):
    """The file was sent, its answer was lost, and whether the server took
    it could not be settled: the lookup found several candidate jobs, or the
    deadline left no time to look.  Sending it again may pay twice.

    ``candidates`` holds the :class:`JobRecord`\\ s that may be this upload
    (possibly none); look at them, or at ``munsit-progress list``, first.
    """

    def __init__(self, message: str, candidates: "Optional[List[JobRecord]]" = None) -> None:
        self.candidates = list(candidates or [])
        if self.candidates:
            message += "; candidate jobs: %s" % ", ".join(
                "%s (%s, %s)" % (job.denoise_id, job.status, job.created_at or "?")
                for job in self.candidates[:10]
            )
        super().__init__(message)

    def __reduce__(self) -> Tuple[Any, ...]:
        return (
            type(self),
            (self.args[0].split("; candidate jobs:")[0], self.candidates),
            self.__dict__,
        )


# --------------------------------------------------------------------------
# The client: configured once, one connection pool, every operation
# --------------------------------------------------------------------------


class Client:
    """Munsit's API, configured once: the key, the base URL, the timeouts,
    the retry policy and one pool of connections, shared by every call.

    ``api_key`` defaults to ``$MUNSIT_API_KEY`` and ``base_url`` to
    ``$MUNSIT_BASE_URL``, else :data:`DEFAULT_BASE_URL`, both read now.  A
    malformed base URL or timeout raises :class:`ConfigurationError` here; a
    missing key is raised by the first call that needs one (``download()``
    of a URL off the API's origin needs none).  ``session`` is a
    ``requests.Session`` to send through (proxies, certificates, adapters of
    your own); the client then leaves it open.  ``retry`` is the
    :class:`RetryPolicy` of every call.  ``connect_timeout`` bounds setting
    up a connection; ``read_timeout`` is how long a silent connection is
    trusted (``None``: :data:`DEFAULT_READ_TIMEOUT` for uploads and progress
    streams, 60 s for the job list and downloads).  ``allow_http`` lets a
    download follow a plain-http result URL while the API is https.

    A client holds no per-call state: one instance may be shared by threads
    (a notebook's cells, a task engine's worker) and each call has its own
    deadline (``timeout=``).  Use it as a context manager, or call
    :meth:`close`, to close the connections it opened.

    Example::

        with munsit_progress.Client() as client:
            done = client.denoise("in.wav", "clean.wav", on_progress=ProgressBar())
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        session: Optional[requests.Session] = None,
        retry: "Optional[RetryPolicy]" = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: Optional[float] = None,
        allow_http: bool = False,
    ) -> None:
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a RetryPolicy, got %s" % type(retry).__name__)
        if session is not None and not isinstance(session, requests.Session):
            raise ConfigurationError(
                "session must be a requests.Session, got %s" % type(session).__name__
            )
        self._api_key, self._base_url = _checked_settings(
            api_key, base_url, connect_timeout, read_timeout
        )
        self._connect_timeout = float(connect_timeout)
        self._read_timeout = None if read_timeout is None else float(read_timeout)
        self._retry = retry if retry is not None else RetryPolicy()
        self._allow_http = bool(allow_http)
        self._owned = session is None
        self._session = _new_session(_CLIENT_POOL) if session is None else session
        self._closed = False

    def __repr__(self) -> str:
        return "<munsit_progress.Client %s>" % _redact(self._base_url)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections, if the client made its session; a closed
        client refuses further calls."""
        self._closed = True
        if self._owned:
            self._session.close()

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    @property
    def retry(self) -> "RetryPolicy":
        """The :class:`RetryPolicy` of every call."""
        return self._retry

    def denoise(
        self,
        path: Any,
        output: Optional[str] = None,
        *,
        on_progress: "Union[Callable[[ProcessingEvent], Any], ProgressBar, None]" = None,
        timeout: Optional[float] = None,
        check: bool = True,
        tag: bool = True,
        reuse: bool = True,
        retry_failed: bool = False,
        horizon: float = DEFAULT_HORIZON,
        lock: Optional[Callable[[str], Any]] = None,
        max_size: int = DEFAULT_MAX_DOWNLOAD,
    ) -> DoneEvent:
        """Upload a file, follow its job, save the result; return the
        :class:`DoneEvent`.

        :meth:`submit`, then :meth:`wait`, then (if ``output`` is given)
        :meth:`download`, under one overall ``timeout``: the three together
        never run past it.  ``output`` is checked before the upload, so that
        a job is never paid for when its result could not be saved.
        ``on_progress`` receives each :class:`ProcessingEvent`; a
        :class:`ProgressBar` shows the upload, the processing and the
        download as one display.  The other arguments are as for those
        methods.

        The job is known by its content (see :meth:`submit`): when the
        account has this content's job already, it is followed and its
        result saved, and nothing is sent.  So calling ``denoise()`` again,
        in another process or on another host (a cron rerun, a task engine's
        retry) pays once; pass ``lock`` where two calls may start the same
        content at the same moment.  When an adopted job's result can no
        longer be downloaded (403, 404, 410), the error names the job;
        ``reuse=False`` sends the file again.

        Every error raised after the server took the job carries its
        ``denoise_id`` (attribute and message), the errors of saving the
        result included (:class:`SaveError`: a full disk, a folder gone).

        An ``output`` in a folder where :meth:`denoise_many` is running
        raises :class:`BatchBusyError` before anything is sent; while this
        call saves there, a batch started in that folder is refused.

        Example::

            done = client.denoise("interview.wav", "clean.wav", timeout=3600)
        """
        options = _JobOptions(tag, reuse, retry_failed, horizon, lock, max_size)
        with self._call(timeout, _READ_TIMEOUT_STREAM, require_key=True) as call:
            target = None  # type: Optional[Tuple[str, str]]
            if output is not None:
                target = (_shown_path(output), _output_path(output))
            source = _Source(path, check)
            try:
                observer = _observer(on_progress)
                with _batch_folder_held(None if target is None else target[1]):
                    return _denoise_one(
                        call, source, target, observer, self._retry, options, _Hooks()
                    )
            finally:
                source.close()

    def denoise_many(
        self,
        paths: Any,
        output_dir: str,
        *,
        concurrency: int = 4,
        timeout: Optional[float] = None,
        on_progress: Any = None,
        check: bool = True,
        max_files: Optional[int] = None,
        max_bytes: Optional[int] = None,
        retry_failed: bool = False,
        tag: bool = True,
        reuse: bool = True,
        horizon: float = DEFAULT_HORIZON,
        lock: Optional[Callable[[str], Any]] = None,
        rehash: bool = False,
    ) -> "Iterator[FileResult]":
        """Denoise many files, ``concurrency`` at a time, into
        ``output_dir``; yield a :class:`FileResult` for each as it finishes.

        Each result is saved in ``output_dir`` under its input's base name
        with the result's extension (from the done URL; ``.wav`` if it has
        none).  Inputs that could land on the same output are refused with
        :class:`ConfigurationError` before anything is sent.

        The run can be killed at any moment and run again: a journal in
        ``output_dir`` (:data:`JOURNAL_NAME`) records each input's content
        before its upload, its job the moment the upload is answered, and
        its saved output.  A later run skips what is saved, follows what was
        submitted instead of uploading it again, and looks up (``GET
        /denoise``) what was sent without an answer before sending it again.
        Only one run at a time may use a folder: another raises
        :class:`BatchBusyError` at once.  An input whose size, modification
        time, inode and device are those the journal noted when it last
        hashed it is known without being read (a file rewritten in place at
        the same size within one tick of its timestamps is the blind spot);
        ``rehash=True`` reads and hashes every input.  ``timeout`` bounds
        the whole run; what is left undone is done by the next run.  After a
        429 every new upload waits; after a 402 none is sent
        (:class:`PaymentRequiredError`) while jobs already submitted are
        followed to their end; a file that fails does not stop the others.
        ``max_files`` and ``max_bytes`` cap what this run sends
        (:class:`NotSubmittedError` for the rest).  A job that failed on the
        server is not sent again unless ``retry_failed``.

        Each file's job is known by its content, as :meth:`submit` knows it
        (``tag``, ``reuse``, ``horizon``, ``lock``): the account's recent
        jobs are read once for the whole run, and a file whose content has a
        job already is followed and saved, not sent.  An output that the
        journal says holds another content's result (an earlier input of
        the same base name) is never replaced: that input is refused
        (:class:`ConfigurationError`) before anything is sent.

        ``on_progress`` may be a :class:`ProgressBar` (its stream and mode
        draw the batch: lines in place on a terminal, prefixed lines in a
        log, one display in a notebook) or a callable ``(path, event)``.

        The journal is locked when this is called and released when the
        iterator is exhausted or closed.  Example::

            for result in client.denoise_many(sorted(glob.glob("in/*.wav")), "out"):
                print(result.path, result.output or result.error)
        """
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError("concurrency must be a whole number >= 1")
        if on_progress is not None and not callable(on_progress):
            raise ConfigurationError(
                "on_progress must be a ProgressBar or a callable (path, event), got %s"
                % type(on_progress).__name__
            )
        for name, cap in (("max_files", max_files), ("max_bytes", max_bytes)):
            if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
                raise ConfigurationError("%s must be a whole number >= 0" % name)
        self._check_open()
        realpath = _RealPaths()
        batch = _Batch(
            _batch_inputs(paths, realpath),
            output_dir,
            concurrency=concurrency,
            deadline=_deadline(timeout, self._retry.clock),
            on_progress=on_progress,
            settings=dict(
                api_key=self._api_key,
                base_url=self._base_url,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout or _READ_TIMEOUT_STREAM,
                allow_http=self._allow_http,
            ),
            check=check,
            max_files=max_files,
            max_bytes=max_bytes,
            options=_JobOptions(tag, reuse, retry_failed, horizon, lock),
            policy=self._retry,
            rehash=rehash,
            realpath=realpath,
            # More workers than the pool holds: each its own, as urllib3
            # would otherwise drop (and warn of) every connection past it.
            session=self._session if concurrency <= _CLIENT_POOL or not self._owned else None,
        )
        return batch.results()

    def submit(
        self,
        path: Any,
        *,
        on_upload: Optional[Callable[[int, Optional[int]], Any]] = None,
        timeout: Optional[float] = None,
        check: bool = True,
        tag: bool = True,
        reuse: bool = True,
        retry_failed: bool = False,
        horizon: float = DEFAULT_HORIZON,
        lock: Optional[Callable[[str], Any]] = None,
    ) -> Submission:
        """Upload a file (``POST /denoise``) and return its
        :class:`Submission`, or adopt the job the account already has for
        the same content.

        ``path`` is a file name, or an open binary file with a ``name``
        (sent from its current position).  The file is streamed, never read
        whole, with an exact Content-Length; ``on_upload(sent, total)`` is
        called as bytes go out (a :class:`ProgressBar` or its ``transfer``
        fits).

        Checked before any byte is sent (:class:`ConfigurationError`): a
        readable, non-empty regular file; and, unless ``check=False``, at
        most :data:`MAX_UPLOAD_BYTES`, an audio or video extension the API
        lists, and a WAV file no longer than 15 minutes by its header.

        Every job is known by its content.  The file is sent under its own
        name after a tag made from its SHA-256
        (``munsit-<20 hex digits>.interview.wav``, see :func:`content_tag`),
        and before paying, the account's jobs of the last ``horizon``
        seconds (default 7 days) are looked through for that tag and size: a
        job found is adopted (``Submission.adopted``) and nothing is sent.
        So a second call, a rerun after a crash, a renamed copy, another
        process or another host with the same content pays once.  A job
        found that failed raises :class:`DenoiseFailedError` with its
        ``denoise_id``, unless ``retry_failed=True``, which sends the file
        again.  ``reuse=False`` always sends a new job (still tagged).
        ``tag=False`` sends the plain name and looks nothing up first.
        Looking, then sending, is not atomic: where two processes may start
        the same content at the same moment (a task engine running one task
        twice), pass ``lock``: a callable that takes the content's key (a
        str) and returns a context manager held from before the look until
        the new job's id is known, such as ``lambda key:
        distributed.Lock(key)`` or ``lambda key: redis.lock(key,
        timeout=600)``.

        The job is billed and the call is not idempotent, so it is sent
        again only when the server certainly did not take it: the connection
        could not be made or broke before the whole file was sent, or the
        server answered 429 or 503 (``Retry-After`` is obeyed), as the
        client's ``retry`` allows.  When the file was sent and the answer
        lost (a reset, a read timeout, 502, 504), the job is looked up (by
        its tag; untagged, by its name and size since the upload began),
        twice a few seconds apart, and returned if found; the file is sent
        again only if it is not there.  If an untagged lookup finds several
        candidates, or the deadline leaves no time to look,
        :class:`SubmissionUnknownError` names them instead of risking a
        second charge.

        Raises :class:`APIError` (400: the API refused the file, with its
        ``error_code`` and ``error_message``), :class:`PaymentRequiredError`
        (402), :class:`AuthenticationError`, :class:`DenoiseFailedError`,
        :class:`TransportError`, :class:`WaitTimeoutError` or
        :class:`SubmissionUnknownError`.

        Example::

            job = client.submit("interview.wav", on_upload=ProgressBar())
            done = client.wait(job.denoise_id)
        """
        options = _JobOptions(tag, reuse, retry_failed, horizon, lock)
        with self._call(timeout, _READ_TIMEOUT_STREAM, require_key=True) as call:
            source = _Source(path, check)
            try:
                upload = None if on_upload is None else _observer(on_upload, "uploading").uploading
                return _submit(call, source, upload, self._retry, options, _Hooks())
            finally:
                source.close()

    def list_jobs(
        self,
        *,
        limit: Optional[int] = None,
        offset: int = 0,
        timeout: Optional[float] = None,
    ) -> List[JobRecord]:
        """The account's jobs (``GET /denoise``), newest first, as
        :class:`JobRecord`\\ s: at most ``limit`` of them (``None``: all),
        after skipping ``offset``.

        Unknown extra fields are ignored; a body that is not a list of
        records with at least an ``id`` and a ``status`` is a
        :class:`ProtocolError`.  Dropped connections, 429 and 5xx are
        retried as the client's ``retry`` says, within ``timeout``.  Raises
        :class:`AuthenticationError`, :class:`APIError`,
        :class:`TransportError`, :class:`ProtocolError` or
        :class:`WaitTimeoutError`.

        Example::

            for job in client.list_jobs(limit=10):
                print(job.created_at, job.status, job.file_name)
        """
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ConfigurationError("limit must be a whole number >= 1, got %r" % (limit,))
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ConfigurationError("offset must be a whole number >= 0, got %r" % (offset,))
        with self._call(timeout, _READ_TIMEOUT_SHORT, require_key=True) as call:
            return _list_again(call, limit, offset, self._retry)[0]

    def wait(
        self,
        denoise_id: str,
        *,
        on_progress: Optional[Callable[[ProcessingEvent], Any]] = None,
        timeout: Optional[float] = None,
    ) -> DoneEvent:
        """Follow the job to its end and return its :class:`DoneEvent`.

        ``on_progress(event)`` is called for each :class:`ProcessingEvent`;
        after a reconnection, progress may repeat.  ``timeout`` is an
        overall deadline in seconds (``None``: no deadline); it is checked
        before every connection and every pause, bounds the connect and
        response timeouts, and a watchdog cuts a response that is still open
        when it passes.

        Dropped connections, resets, truncated streams, stalls, HTTP 429 and
        5xx are retried as the client's ``retry`` says, sending
        ``Last-Event-ID`` when the stream gave ids.  HTTP 401, 403, 404 and
        other 4xx are not.

        Raises :class:`DenoiseFailedError` if the job fails,
        :class:`WaitTimeoutError` at the deadline,
        :class:`ConfigurationError` before any request for a bad id or a
        missing key, and otherwise the error that ended the last attempt
        (:class:`AuthenticationError`, :class:`JobNotFoundError`,
        :class:`APIError`, :class:`TransportError`,
        :class:`ProtocolError`); each carries the ``denoise_id`` followed.

        If ``on_progress`` is a :class:`ProgressBar` (or one of its
        methods), it is finished at the end with the done event or the
        exception.

        Example::

            done = client.wait(denoise_id, on_progress=lambda e: print(e.pct), timeout=3600)
        """
        job = _job_id(denoise_id)
        observer = _observer(on_progress)
        progress = None if on_progress is None else observer.progress
        try:
            with self._call(timeout, _READ_TIMEOUT_STREAM, require_key=True) as call:
                done = _follow_to_end(call, job, progress, self._retry)
        except BaseException as exc:
            if isinstance(exc, MunsitError) and exc.denoise_id is None:
                exc.denoise_id = job
                exc._job_noted = False
            observer.ended(exc)
            raise
        observer.ended(done)
        return done

    def iter_events(self, denoise_id: str) -> Iterator[Event]:
        """Yield the validated events of one connection to the job's
        progress stream.

        Events are :class:`ProcessingEvent`, then one terminal
        :class:`DoneEvent` or :class:`ErrorEvent` (an error event is yielded
        as data, not raised).  After the terminal event the connection is
        closed and the iterator ends.  It never reconnects: if the stream
        ends early, is reset, or is silent for the client's
        ``read_timeout``, it raises :class:`TransportError`.  Use
        :meth:`wait` to follow a job across reconnections.

        A ``denoise_id`` that is not a UUID, or a missing key, raises
        :class:`ConfigurationError` here, before any request.  Raises
        :class:`AuthenticationError`, :class:`JobNotFoundError`,
        :class:`APIError`, :class:`ProtocolError` or
        :class:`TransportError`.  Closing the iterator early (``break``,
        ``.close()``) closes the connection.

        Example::

            for event in client.iter_events(denoise_id):
                print(event)
        """
        job = _job_id(denoise_id)
        call = self._call(None, _READ_TIMEOUT_STREAM, require_key=True)
        return _owned_events(call, job)

    def download(
        self,
        done: DoneEvent,
        path: str,
        *,
        timeout: Optional[float] = None,
        on_progress: "Union[Callable[[int, Optional[int]], Any], ProgressBar, None]" = None,
        max_size: int = DEFAULT_MAX_DOWNLOAD,
    ) -> str:
        """Save the denoised audio of ``done`` to ``path``; return the path.

        The file is streamed to disk and written atomically: bytes go to a
        temporary file in the same folder, renamed to ``path`` only when the
        whole body has arrived, so a failure or Ctrl-C leaves nothing at
        ``path`` (and an earlier file there untouched, its permission bits
        kept by the new one).  A symlink is written through (the file it
        points to is replaced); a ``path`` that is a device, a FIFO or a
        folder is refused with :class:`ConfigurationError` before any
        request.

        A dropped connection is resumed where it stopped (``Range``, with
        ``If-Range`` when the server gave an ETag or Last-Modified), retried
        as the client's ``retry`` says within ``timeout``; a server that
        answers 200 instead of 206 is read again from the start.  The body
        must arrive as sent (identity; a compressed one is refused) and stay
        within ``max_size`` bytes.  The API key is sent only if ``done.url``
        is on the API's own origin, and never to a host a redirect names; a
        plain-http URL is refused while the API is https, unless the client
        has ``allow_http``.

        ``on_progress(received, total)`` is called as bytes arrive
        (``total`` is ``None`` when unknown); a :class:`ProgressBar` fits,
        and is finished with the saved path.  ``timeout`` is an overall
        deadline in seconds.

        Raises :class:`APIError` for an HTTP error, :class:`TransportError`
        when the transfer keeps failing, :class:`ProtocolError` for a body
        that is not what was asked for, :class:`WaitTimeoutError` at the
        deadline, ``OSError`` if the file cannot be written.
        """
        if not isinstance(max_size, int) or max_size < 0:
            raise ConfigurationError("max_size must be a number of bytes >= 0")
        observer = _observer(on_progress, "downloading")
        report = None if on_progress is None else observer.downloading
        try:
            target = _output_path(path)
            with self._call(timeout, _READ_TIMEOUT_SHORT, require_key=False) as call:
                try:
                    _save(call, done.url, target, report, max_size, self._retry)
                except WaitTimeoutError as exc:
                    raise WaitTimeoutError(
                        "the deadline passed before the download finished"
                    ) from exc
        except BaseException as exc:
            observer.ended(exc)
            raise
        observer.ended(_Outcome(_SAVED, _clean("saved %s" % path, None)))
        return path

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this Client is closed")

    def _call(self, timeout: Optional[float], read_timeout: float, require_key: bool) -> "_Call":
        """What one call works under: this client's settings and pool, and
        the call's deadline, ``timeout`` seconds from now on the policy's
        clock."""
        self._check_open()
        return _Call(
            self._api_key,
            self._base_url,
            self._session,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout or read_timeout,
            deadline=_deadline(timeout, self._retry.clock),
            policy=self._retry,
            require_key=require_key,
            allow_http=self._allow_http,
        )


# The connections one client keeps open to a host: a batch's workers and a
# notebook's threads share them.
_CLIENT_POOL = 16
_READ_TIMEOUT_STREAM = DEFAULT_READ_TIMEOUT
# A job list or a download that goes silent for a minute has stalled: neither
# waits on the server's processing, as a progress stream does.
_READ_TIMEOUT_SHORT = 60.0


# --------------------------------------------------------------------------
# The module functions: each makes a client for the one call
# --------------------------------------------------------------------------
#
# Each passes its connection arguments to a Client made for this call alone
# and closed after it; see the Client method of the same name for the rest.


def denoise(
    path: Any,
    output: Optional[str] = None,
    *,
    on_progress: "Union[Callable[[ProcessingEvent], Any], ProgressBar, None]" = None,
    timeout: Optional[float] = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    check: bool = True,
    tag: bool = True,
    reuse: bool = True,
    retry_failed: bool = False,
    horizon: float = DEFAULT_HORIZON,
    lock: Optional[Callable[[str], Any]] = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retry: "Optional[RetryPolicy]" = None,
    allow_http: bool = False,
    max_size: int = DEFAULT_MAX_DOWNLOAD,
) -> DoneEvent:
    """Upload a file, follow its job, save the result under one deadline;
    return the :class:`DoneEvent`.  :meth:`Client.denoise` on a client made
    for this call (``api_key``, ``base_url``, ``session``,
    ``connect_timeout``, ``read_timeout``, ``retry`` and ``allow_http`` are
    :class:`Client`'s).

    Example::

        done = denoise("interview.wav", "clean.wav", on_progress=ProgressBar(), timeout=3600)
    """
    with _client_for_call(
        api_key, base_url, session, retry, connect_timeout, read_timeout, allow_http
    ) as client:
        return client.denoise(
            path,
            output,
            on_progress=on_progress,
            timeout=timeout,
            check=check,
            tag=tag,
            reuse=reuse,
            retry_failed=retry_failed,
            horizon=horizon,
            lock=lock,
            max_size=max_size,
        )


def denoise_many(
    paths: Any,
    output_dir: str,
    *,
    concurrency: int = 4,
    timeout: Optional[float] = None,
    on_progress: Any = None,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    check: bool = True,
    max_files: Optional[int] = None,
    max_bytes: Optional[int] = None,
    retry_failed: bool = False,
    tag: bool = True,
    reuse: bool = True,
    horizon: float = DEFAULT_HORIZON,
    lock: Optional[Callable[[str], Any]] = None,
    allow_http: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retry: "Optional[RetryPolicy]" = None,
    rehash: bool = False,
) -> "Iterator[FileResult]":
    """Denoise many files, ``concurrency`` at a time, into ``output_dir``,
    resumably, with a journal; yield a :class:`FileResult` for each as it
    finishes.  :meth:`Client.denoise_many` on a client made for this run,
    closed when the iterator ends.

    Example::

        for result in denoise_many(sorted(glob.glob("in/*.wav")), "out", concurrency=8):
            print(result.path, result.output or result.error)
    """
    client = _client_for_call(
        api_key, base_url, None, retry, connect_timeout, read_timeout, allow_http
    )
    try:
        results = client.denoise_many(
            paths,
            output_dir,
            concurrency=concurrency,
            timeout=timeout,
            on_progress=on_progress,
            check=check,
            max_files=max_files,
            max_bytes=max_bytes,
            retry_failed=retry_failed,
            tag=tag,
            reuse=reuse,
            horizon=horizon,
            lock=lock,
            rehash=rehash,
        )
    except BaseException:
        client.close()
        raise
    return _closing(results, client)


def submit(
    path: Any,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    on_upload: Optional[Callable[[int, Optional[int]], Any]] = None,
    timeout: Optional[float] = None,
    check: bool = True,
    tag: bool = True,
    reuse: bool = True,
    retry_failed: bool = False,
    horizon: float = DEFAULT_HORIZON,
    lock: Optional[Callable[[str], Any]] = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retry: "Optional[RetryPolicy]" = None,
) -> Submission:
    """Upload a file (``POST /denoise``), or adopt the job the account
    already has for its content; return its :class:`Submission`.
    :meth:`Client.submit` on a client made for this call.

    Example::

        job = submit("interview.wav", on_upload=ProgressBar())
        done = wait(job.denoise_id)
    """
    with _client_for_call(
        api_key, base_url, session, retry, connect_timeout, read_timeout
    ) as client:
        return client.submit(
            path,
            on_upload=on_upload,
            timeout=timeout,
            check=check,
            tag=tag,
            reuse=reuse,
            retry_failed=retry_failed,
            horizon=horizon,
            lock=lock,
        )


def list_jobs(
    *,
    limit: Optional[int] = None,
    offset: int = 0,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    timeout: Optional[float] = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = _READ_TIMEOUT_SHORT,
    retry: "Optional[RetryPolicy]" = None,
) -> List[JobRecord]:
    """The account's jobs (``GET /denoise``), newest first, as
    :class:`JobRecord`\\ s.  :meth:`Client.list_jobs` on a client made for
    this call.

    Example::

        for job in list_jobs(limit=10):
            print(job.created_at, job.status, job.file_name)
    """
    with _client_for_call(
        api_key, base_url, session, retry, connect_timeout, read_timeout
    ) as client:
        return client.list_jobs(limit=limit, offset=offset, timeout=timeout)


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
    retry: "Optional[RetryPolicy]" = None,
) -> DoneEvent:
    """Follow the job to its end, across reconnections, and return its
    :class:`DoneEvent`.  :meth:`Client.wait` on a client made for this call.

    Example::

        done = wait(denoise_id, on_progress=lambda e: print(e.pct), timeout=3600)
    """
    job = _job_id(denoise_id)
    with _client_for_call(
        api_key, base_url, session, retry, connect_timeout, read_timeout
    ) as client:
        return client.wait(job, on_progress=on_progress, timeout=timeout)


def iter_events(
    denoise_id: str,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> Iterator[Event]:
    """Yield the validated events of one connection to the job's progress
    stream; never reconnects.  :meth:`Client.iter_events` on a client made
    for this call, closed when the iterator ends.

    Example::

        for event in iter_events(denoise_id):
            print(event)
    """
    job = _job_id(denoise_id)
    client = _client_for_call(api_key, base_url, session, None, connect_timeout, read_timeout)
    try:
        events = client.iter_events(job)
    except BaseException:
        client.close()
        raise
    return _closing(events, client)


def download(
    done: DoneEvent,
    path: str,
    *,
    api_key: Optional[str] = None,
    base_url: Optional[str] = None,
    session: Optional[requests.Session] = None,
    timeout: Optional[float] = None,
    read_timeout: float = _READ_TIMEOUT_SHORT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    on_progress: "Union[Callable[[int, Optional[int]], Any], ProgressBar, None]" = None,
    max_size: int = DEFAULT_MAX_DOWNLOAD,
    allow_http: bool = False,
    retry: "Optional[RetryPolicy]" = None,
) -> str:
    """Save the denoised audio of ``done`` to ``path``, atomically,
    resuming a broken transfer; return the path.  :meth:`Client.download`
    on a client made for this call.

    Example::

        download(done, "clean.wav", on_progress=ProgressBar())
    """
    with _client_for_call(
        api_key, base_url, session, retry, connect_timeout, read_timeout, allow_http
    ) as client:
        return client.download(
            done, path, timeout=timeout, on_progress=on_progress, max_size=max_size
        )


def _client_for_call(
    api_key: Optional[str],
    base_url: Optional[str],
    session: Optional[requests.Session],
    retry: "Optional[RetryPolicy]",
    connect_timeout: float,
    read_timeout: float,
    allow_http: bool = False,
) -> Client:
    """The client a module function makes for its one call."""
    return Client(
        api_key,
        base_url,
        session=session,
        retry=retry,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        allow_http=allow_http,
    )


def _closing(items: Iterator[Any], client: Client) -> Iterator[Any]:
    """``items``, then ``client`` closed: when they run out, or when the
    caller closes the iterator early."""
    try:
        yield from items  # closing this closes ``items`` too (PEP 380)
    finally:
        client.close()


# --------------------------------------------------------------------------
# Text from the server: redacted and made printable before it is shown.
# --------------------------------------------------------------------------

# Every secret this process has handed to the module (API keys, passwords in
# a base URL).  Servers echo what they were sent, so any text that came from
# one, or names a URL, has these removed before it reaches an exception, a
# log record or a display.  A bounded, process-wide list: a display does not
# know which call's key to look for.
_secrets = ()  # type: Tuple[str, ...]
# Each secret as sent and as JSON writes it (a quote or a backslash escaped,
# non-ASCII as \uXXXX or not): a server's JSON body, or json.dumps() of one
# for a message, holds the escaped form.  Longest first, so that no shorter
# form breaks up a longer one before it is matched.
_secret_forms = ()  # type: Tuple[str, ...]
_secrets_lock = threading.Lock()
_MIN_SECRET = 6  # shorter values ("demo") would mangle ordinary words
_REDACTED = "***"
_URL_PASSWORD = _Regex(r"(?<=://)([^/@\s:]*):[^/@\s]*@")


def _remember_secret(value: str) -> None:
    global _secrets, _secret_forms
    if len(value) < _MIN_SECRET or value in _secrets:
        return
    with _secrets_lock:
        _secrets = (value,) + _secrets[:31]
        forms = {
            form
            for secret in _secrets
            for form in (
                secret,
                json.dumps(secret)[1:-1],
                json.dumps(secret, ensure_ascii=False)[1:-1],
            )
        }
        _secret_forms = tuple(sorted(forms, key=len, reverse=True))


def _redact(text: str) -> str:
    """``text`` without any known secret (nor its JSON-escaped form) or URL
    password."""
    for secret in _secret_forms:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1:" + _REDACTED + "@", text)
    return text


# Bidirectional embeddings, overrides and isolates: they can make a log line
# read as something else.  (The marks U+200E and U+200F, which Arabic text
# uses, stay.)
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _printable(text: str) -> str:
    """``text`` safe to write to a terminal or a log line: control
    characters (C0 and C1: newlines, escapes) and line or paragraph
    separators made spaces, bidirectional overrides dropped, lone
    surrogates made U+FFFD."""
    if text.isprintable():
        return text
    import unicodedata

    out = []
    for char in text:
        kind = unicodedata.category(char)
        if kind in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif kind == "Cs":
            out.append("\ufffd")
        elif char not in _BIDI_CONTROLS:
            out.append(char)
    return "".join(out)


def _clean(text: str, limit: Optional[int] = 200) -> str:
    """Text safe to put in a message or a display: redacted, printable, and
    cut at ``limit`` characters (None: whole).

    Give it the whole text: redacted after a cut, a key that crossed the cut
    would leave its start, which no longer matches."""
    text = _redact(text)
    # Made printable after the cut: that is a loop in Python, and the text
    # may be a body of megabytes.
    return _printable(text if limit is None or len(text) <= limit else text[:limit] + "...")


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
        lines = _LINE_END.split(text) if "\r" in text else text.split("\n")  # type: List[str]
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
            logger.debug("skipping a non-JSON %s event", _clean(repr(event_type), 80))
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
_UUID = _Regex(r"[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}")


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
# HTTP client: one request path for every endpoint, its time limits, and
# what a failure means in plain words.  Above it, nothing touches requests'
# objects: _Call.send returns an _Exchange, read through the client.
# --------------------------------------------------------------------------


def _origin(url: str) -> Tuple[str, str, Optional[int]]:
    """(scheme, host, port) of ``url``; ValueError for a malformed one.

    Parsed by urllib3, as the connection will be: urllib.parse reads
    "http://evil\\@api/" as host "api" where urllib3 connects to "evil".
    """
    if not isinstance(url, str) or "\\" in url or " " in url or not url.isprintable():
        # White space, C0/C1 controls, line separators: never in a URL we use.
        raise ValueError("ambiguous URL")
    parts = urllib3.util.parse_url(url)
    scheme = (parts.scheme or "").lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.host or "").lower(), port


def _check_port(url: str) -> None:
    """ConfigurationError unless ``url``'s port, if it has one, is a number
    from 1 to 65535.  urllib3 reads an empty port ("http://host:/") as the
    scheme's default and port 0 as none: a typo that would connect, and
    retry, somewhere unmeant."""
    authority = url.split("://", 1)[-1]
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    host_port = authority.rpartition("@")[2]
    if host_port.startswith("["):  # an IPv6 literal: the port follows "]"
        host_port = host_port.partition("]")[2]
    if ":" not in host_port:
        return
    port = host_port.rpartition(":")[2]
    shown = _clean(url, 100)
    if not port:
        raise ConfigurationError(
            "the base URL %r has an empty port (nothing after ':'): give the port, "
            "or drop the ':'" % shown
        )
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise ConfigurationError(
            "the base URL %r has a malformed port %r (a number from 1 to 65535)"
            % (shown, _clean(port, 20))
        )


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

    It alone keeps real time (time.monotonic), not the policy's clock: it
    cuts real sockets, and is given durations, not deadlines.
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
    """One request and its response on one connection, and its time limit.

    :meth:`_Call.send` returns it once the response's headers are in:
    the rest of the module reads ``status_code`` and ``headers`` here, the
    body through the client (``chunks``, ``read_json``, ``error``), and
    closes it, never touching requests' objects."""

    __slots__ = (
        "client",
        "conn",
        "response",
        "expired",
        "tunnel",
        "_entry",
        "_closed",
        "_lock",
        "_reason",
    )

    def __init__(self, client: "_Call") -> None:
        self.client = client
        self.conn = None  # type: Any
        self.response = None  # type: Optional[requests.Response]
        #: Why the watchdog cut the connection ("deadline" or "answer"), if it did.
        self.expired = None  # type: Optional[str]
        #: "asked" once a CONNECT went to the proxy, "open" once it answered.
        self.tunnel = None  # type: Optional[str]
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

    def limit_answer(self, seconds: float) -> None:
        """Cut the connection unless its answer is complete within
        ``seconds``, or by the deadline if that comes first."""
        remaining = self.client.remaining()
        if remaining is not None and remaining <= seconds:
            self.limit(remaining, "deadline")
        else:
            self.limit(seconds, "answer")

    def ended(self, when: str) -> "Optional[MunsitError]":
        """The error that ends this exchange now, if one does: the watchdog
        cut it, the deadline passed or the client was stopped."""
        with self._lock:
            expired = self.expired
        return self.client.stopped(when, expired)

    @property
    def status_code(self) -> int:
        return cast(requests.Response, self.response).status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return cast(requests.Response, self.response).headers

    def _cut(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.expired = self._reason
            sock = _socket_of(self.response.raw) if self.response is not None else None
            if sock is None and self.conn is not None:
                sock = _plain_socket(getattr(self.conn, "sock", None))
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

    def close(self, reuse: bool = False) -> None:
        """Stop the watchdog and close the response; with ``reuse``, give
        its connection back to the pool instead, if the watchdog never cut
        it.  The watchdog is stopped first, under the lock it cuts under, so
        that it cannot cut a connection another request has taken since."""
        with self._lock:
            self._closed = True
            _watchdog.cancel(self._entry)
            self._entry = None
        if self.response is not None:
            if reuse and self.expired is None:
                self.response.raw.release_conn()
            self.response.close()


class _SentBody:
    """A request body as the connection reads it.  The client needs no more
    of a body than ``read(amount)`` and ``len()`` (its exact length, sent
    as Content-Length: many servers and proxies refuse a chunked upload);
    this wrapper tells the exchange when the last byte is handed over, and
    keeps what the body's ``read`` raised (a caller's callback), to pass it
    on unchanged."""

    __slots__ = ("_body", "_exchange", "_ended", "raised")

    def __init__(self, body: Any, exchange: _Exchange) -> None:
        self._body = body
        self._exchange = exchange
        self._ended = False
        self.raised = None  # type: Optional[BaseException]

    def __len__(self) -> int:
        return len(self._body)

    def read(self, amount: int = -1) -> bytes:
        try:
            data = self._body.read(amount)  # type: bytes
        except BaseException as exc:
            self.raised = exc
            raise
        if not data and not self._ended:
            # The upload was bounded by the deadline alone; its answer is
            # bounded as a GET's is.
            self._ended = True
            self._exchange.limit_answer(self._exchange.client.read_timeout)
        return data


def _socket_of(raw: Any) -> Optional[socket.socket]:
    """The socket under a urllib3 response, for the watchdog."""
    try:
        sock = raw._fp.fp.raw._sock
    except AttributeError:
        sock = getattr(getattr(raw, "_connection", None), "sock", None)
    return _plain_socket(sock)


def _plain_socket(sock: Any) -> Optional[socket.socket]:
    """The socket.socket under ``sock``.

    Through an https proxy to an https URL, urllib3 (1.26 and later) hands
    http.client an SSLTransport: TLS to the API inside the TLS to the proxy,
    which is not a socket, and socket.shutdown refuses it.  Its ``socket``
    is the SSLSocket to the proxy; shutting that down ends both.
    """
    for _ in range(3):
        if isinstance(sock, socket.socket):
            return sock
        sock = getattr(sock, "socket", None)
    return None


# urllib3 1.26 added TLS inside TLS; 1.25 would send an https:// proxy its
# CONNECT in plain text.
_TLS_IN_TLS = tuple(int(part) for part in re.findall(r"\d+", urllib3.__version__)[:2]) >= (1, 26)


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

    def _tunnel(self, *args: Any, **kwargs: Any) -> Any:
        # urllib3 reads the proxy's answer to CONNECT under the connect
        # timeout and reports it as a read timeout: only this tells "the
        # proxy did not answer" from "the API did not answer".
        exchange = getattr(_local, "exchange", None)
        if exchange is not None:
            exchange.tunnel = "asked"
        result = super()._tunnel(*args, **kwargs)  # type: ignore[misc]
        if exchange is not None:
            exchange.tunnel = "open"
        return result


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

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests verifies certificates for https URLs only: a plain-http
        # URL through an https proxy would send the proxy its login over TLS
        # to whoever answers.  The pool is the proxy's then, and is https.
        if getattr(conn, "scheme", None) == "https" and url[:5].lower() == "http:":
            url = "https:" + url[5:]
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]

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


def _checked_settings(
    api_key: Optional[str],
    base_url: Optional[str],
    connect_timeout: float,
    read_timeout: Optional[float],
) -> Tuple[str, str]:
    """The key ("" if none) and the base URL a client is made with, read
    from the environment where not given, or a ConfigurationError."""
    if api_key is None:
        api_key = os.environ.get(_API_KEY_ENV)
    if not isinstance(api_key, (str, type(None))):
        raise ConfigurationError("api_key must be a str, got %s" % type(api_key).__name__)
    # A key read from a file or an env var often ends in a newline.
    api_key = (api_key or "").strip()
    if not all(" " <= c <= "~" for c in api_key):
        # requests would reject it with the key itself in the message.
        raise ConfigurationError("the API key contains characters not allowed in a header")
    _remember_secret(api_key)
    if base_url is None:
        base_url = os.environ.get(_BASE_URL_ENV) or DEFAULT_BASE_URL
    if not isinstance(base_url, str):
        raise ConfigurationError("base_url must be a str, got %s" % type(base_url).__name__)
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
    _check_port(base_url)
    for name, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if value is None and name == "read_timeout":
            continue
        if not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ConfigurationError("%s must be a positive number of seconds" % name)
    return api_key, base_url


class _Call:
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
        "policy",
        "clock",
        "allow_http",
        "aborted",
        "_owned",
        "_api_origin",
        "_current",
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
        policy: "Optional[RetryPolicy]" = None,
        require_key: bool = True,
        allow_http: bool = False,
        pool_size: int = 10,
    ) -> None:
        api_key, base_url = _checked_settings(api_key, base_url, connect_timeout, read_timeout)
        if not api_key and require_key:
            raise ConfigurationError(
                "no API key: pass api_key= or set the %s environment variable" % _API_KEY_ENV
            )
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._api_origin = _origin(self.base_url)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        #: The call's deadline, a reading of the policy's clock: the one clock
        #: that deadlines, pauses and waits are measured on.
        self.deadline = deadline
        self.policy = policy if policy is not None else RetryPolicy()
        self.clock = self.policy.clock
        self.allow_http = allow_http
        #: Set by abort(): every request from now on raises _Aborted.
        self.aborted = False
        self._current = None  # type: Optional[_Exchange]
        self._owned = session is None
        self.session = _new_session(pool_size) if session is None else session
        _remember_proxy_passwords(self.session)

    def __repr__(self) -> str:
        return "<_Call %s>" % _redact(self.base_url)

    def close(self) -> None:
        """Close the session if this client made it."""
        if self._owned:
            self.session.close()

    def __enter__(self) -> "_Call":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def url(self, path: str) -> str:
        return self.base_url + path

    def proxy_for(self, url: str) -> Optional[str]:
        """The proxy a request to ``url`` goes through, as scheme://host:port
        (no user or password), or None: requests' own choice, from the
        session's ``proxies`` and HTTPS_PROXY, HTTP_PROXY, NO_PROXY."""
        try:
            settings = self.session.merge_environment_settings(url, {}, None, None, None)
            proxy = requests.utils.select_proxy(url, settings["proxies"])
            if not proxy:
                return None
            if "://" not in proxy:
                proxy = "http://" + proxy  # as requests reads it
            scheme, host, port = _origin(proxy)
        except Exception:  # a malformed setting: requests will say so itself
            return None
        return "%s://%s" % (scheme, host) + (":%d" % port if port else "")

    def remaining(self) -> Optional[float]:
        return None if self.deadline is None else self.deadline - self.clock()

    def abort(self) -> None:
        """Stop this client from another thread: cut the connection it is
        using now, and refuse any further request."""
        self.aborted = True
        current = self._current
        if current is not None:
            current.limit(0, "aborted")

    def check_time(self, doing: str) -> None:
        """Raise if no request may start now (see :meth:`stopped`)."""
        error = self.stopped(doing)
        if error is not None:
            raise error

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, Union[str, bytes]],
        *,
        body: Optional[Callable[[], Any]] = None,
        foreign: bool = False,
    ) -> _Exchange:
        """Send one request, following redirects by hand; return the final
        response's exchange, its body unread and its status unchecked: the
        caller reads it (``chunks``, ``read_json``, ``error``) or closes it.

        ``body`` makes a fresh request body for each hop: an object with
        ``read(amount)`` and ``len()``, read until it returns b"".  ``foreign``: the
        URL may be on another origin (a download): the key goes only to
        ``url`` itself, and only if it is on the API's origin, never to a
        host a redirect names.  Otherwise a redirect to another origin
        raises.  POST follows only 307 and 308, which ask for the same
        request again.
        """
        self._check_url(url)
        for hop in range(_MAX_REDIRECTS + 1):
            self.check_time("before the request was sent")
            if not _TLS_IN_TLS and url[:6].lower() == "https:":
                self._check_proxy(url)
            sent = dict(headers)
            on_api = _origin(url) == self._api_origin
            if self.api_key and on_api and (hop == 0 or not foreign):
                sent["x-api-key"] = self.api_key
            response = self._exchange(method, url, sent, body() if body is not None else None)
            status = response.status_code
            if status == 407:
                proxy = self.proxy_for(url)
                if proxy is not None:  # else an API that says 407: an APIError
                    response.close()
                    raise _refused_login(proxy)
            if status not in _REDIRECT_STATUSES or "Location" not in response.headers:
                return response
            response.close()
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

    def _check_proxy(self, url: str) -> None:
        proxy = self.proxy_for(url)
        if proxy is not None and proxy.startswith("https:"):
            raise ConfigurationError(
                "urllib3 %s cannot reach %s through an https:// proxy (%s): that needs "
                "urllib3 1.26 or later; upgrade it, or give the proxy as http://"
                % (urllib3.__version__, _origin_text(url), proxy)
            )

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
        self, method: str, url: str, headers: Dict[str, Union[str, bytes]], body: Any
    ) -> _Exchange:
        remaining = self.remaining()
        timeout = (
            _bounded(self.connect_timeout, remaining),
            _bounded(self.read_timeout, remaining),
        )
        exchange = _Exchange(self)
        # The whole answer, from connect to the last header, is bounded: by
        # the deadline, and by read_timeout when there is none.  An upload
        # is bounded by the deadline only until its last byte is handed over.
        data = None  # type: Optional[_SentBody]
        if body is None:
            exchange.limit_answer(self.connect_timeout + self.read_timeout)
        else:
            exchange.limit(remaining, "deadline")
            data = _SentBody(body, exchange)
        logger.debug("%s %s", method, _clean(url, 300))
        self._current = exchange
        if self.aborted:  # abort() may have come between check_time and here
            exchange.close()
            raise _Aborted("stopped")
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
            if data is not None and data.raised is exc:
                raise  # the caller's own callback raised: theirs, unchanged
            raise self._failure(exc, exchange, url, timeout[0]) from exc
        except BaseException:  # Ctrl-C: let it through, with the connection closed
            exchange.close()
            raise
        finally:
            _local.exchange = None
            if "x-api-key" in headers:
                headers["x-api-key"] = _REDACTED
        _scrub(response)
        exchange.response = response
        coding = response.headers.get("Transfer-Encoding", "").strip().lower()
        if coding not in ("", "chunked", "identity"):
            # http.client reads anything but a plain "chunked" as raw bytes:
            # chunk sizes or compressed bytes would pass for the body.
            exchange.close()
            raise ProtocolError("unsupported Transfer-Encoding %r" % _clean(coding, 40))
        ended = exchange.ended("while waiting for the answer")
        if ended is not None:
            exchange.close()
            raise ended
        exchange.limit(self.remaining(), "deadline")
        return exchange

    def _failure(
        self, exc: Exception, exchange: _Exchange, url: str, connect_timeout: float
    ) -> MunsitError:
        """The MunsitError for a request that raised ``exc``."""
        _scrub(exc)
        ended = exchange.ended("while waiting for the answer")
        if ended is not None:
            return ended
        return _unreached(exc, url, self.proxy_for(url), exchange, connect_timeout)

    def stopped(self, when: str, expired: Optional[str] = None) -> Optional[MunsitError]:
        """The error that ends a request now, if one does: abort() was
        called, the deadline passed (``when``: "before the request was
        sent"...), or, with ``expired``, the watchdog cut the exchange
        because of one of these or of an answer that took too long.  The
        one place where a cut or a deadline becomes an exception."""
        if expired == "aborted" or self.aborted:
            return _Aborted("stopped")
        if expired == "deadline" or (self.deadline is not None and self.clock() >= self.deadline):
            return WaitTimeoutError("the deadline passed %s" % when)
        if expired == "answer":
            return TransportError(
                "no complete answer within %g seconds" % (self.connect_timeout + self.read_timeout)
            )
        return None

    def error(self, response: _Exchange, for_job: bool = True) -> APIError:
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
            response.close()
        code = text = None
        payload = _json_or_none(body[:_ERROR_BODY_LIMIT])
        if isinstance(payload, dict):
            if isinstance(payload.get("errorCode"), (str, int)):
                code = str(payload["errorCode"])
            for key in ("errorMessage", "message", "error"):
                if isinstance(payload.get(key), str):
                    text = payload[key]
                    break
        reason = cast(requests.Response, response.response).reason
        if text is None:
            text = reason if isinstance(reason, str) and reason else None
        retry_after = _parse_retry_after(response.headers.get("Retry-After"))
        cls = APIError
        if status in (401, 403):
            cls = AuthenticationError
        elif status == 402:
            cls = PaymentRequiredError
        elif status == 404 and for_job:
            cls = JobNotFoundError
        return cls(status, code, text, retry_after)

    def chunks(self, response: _Exchange, decode: bool = True) -> Iterator[bytes]:
        """The body as it arrives (see _read_chunks)."""
        return _read_chunks(response, decode)

    def read_json(self, response: _Exchange, limit: int, what: str) -> Any:
        """The whole JSON body of a 200 answer, at most ``limit`` bytes."""
        content_type = response.headers.get("Content-Type", "")
        body = bytearray()
        whole = False
        try:
            for piece in self.chunks(response):
                body += piece
                if len(body) > limit:
                    raise ProtocolError("%s is larger than %d bytes" % (what, limit))
            whole = True
        finally:
            response.close(reuse=whole)
        payload = _json_or_none(bytes(body))
        if payload is None and body.strip() != b"null":
            raise ProtocolError(
                "%s is not JSON (Content-Type %s): %s"
                % (
                    what,
                    _clean(content_type or "none", 60),
                    _clean(body.decode("utf-8", "replace")),
                )
            )
        return payload


def _remember_proxy_passwords(session: requests.Session) -> None:
    """Add the passwords of the proxies in use to the secrets redacted."""
    from urllib.parse import unquote
    from urllib.request import getproxies

    urls = list(getproxies().values()) if session.trust_env else []
    for url in urls + list((session.proxies or {}).values()):
        try:
            auth = urllib3.util.parse_url(url if "://" in url else "http://" + url).auth
        except Exception:  # requests will refuse it, without our help
            continue
        if auth and ":" in auth:
            password = auth.split(":", 1)[1]
            _remember_secret(password)
            _remember_secret(unquote(password))  # the form requests sends


def _refused_login(proxy: str) -> ProxyAuthenticationError:
    return ProxyAuthenticationError(
        "the proxy %s refused its login (407 Proxy Authentication Required): check the "
        "proxy's user name and password (in HTTPS_PROXY, HTTP_PROXY or the session's "
        "proxies); not tried again, so that the account is not locked" % proxy,
        proxy,
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps, outermost first: requests' and urllib3's
    wrappers keep the cause in ``reason``, in ``args`` or as ``__cause__``."""
    seen = set()  # type: Set[int]
    current = exc  # type: Optional[BaseException]
    while current is not None and id(current) not in seen and len(seen) < 12:
        seen.add(id(current))
        yield current
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in current.args if isinstance(arg, BaseException)), None)
        current = inner or current.__cause__ or current.__context__


def _unreached(
    exc: Exception, url: str, proxy: Optional[str], exchange: _Exchange, connect_timeout: float
) -> TransportError:
    """The error for a request that got no answer, in plain words: whether
    the proxy or the server failed, and why."""
    import ssl

    target = _origin_text(url)
    causes = list(_causes(exc))
    text = " ".join(str(cause) for cause in causes)
    tunnel = exchange.tunnel
    # urllib3 2 says ProxyError for whatever failed before the tunnel was
    # open; 1.x only for some of it.  Our connection classes know how far
    # they got (exchange.conn is set once one of them is in use).
    tls_to_proxy = (proxy or "").startswith("https:") and (
        url[:5].lower() == "http:" or (exchange.conn is not None and tunnel is None)
    )
    at_proxy = proxy is not None and (
        isinstance(exc, requests.exceptions.ProxyError) or tunnel == "asked" or tls_to_proxy
    )
    # NewConnectionError is a ConnectTimeoutError too, for old callers' sake.
    timed_out = any(
        isinstance(
            cause,
            (socket.timeout, TimeoutError, urllib3.exceptions.TimeoutError, requests.Timeout),
        )
        and not isinstance(cause, urllib3.exceptions.NewConnectionError)
        for cause in causes
    )
    refused = re.search(r"Tunnel connection failed: (\d{3})\s*([^'\"]*)", text)
    if proxy is not None and refused:
        if refused.group(1) == "407":
            return _refused_login(proxy)
        return ProxyError(
            "the proxy %s would not connect to %s: it answered %s"
            % (proxy, target, _clean(refused.group(1) + " " + refused.group(2), 80).strip()),
            proxy,
        )
    unverified = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
    if unverified is not None:
        whose = "the proxy %s" % proxy if at_proxy and tunnel != "open" else target
        return CertificateError(
            "cannot verify the certificate of %s: %s; if a private CA signed it, set "
            "REQUESTS_CA_BUNDLE to that CA's certificate (a PEM file), or pass a session "
            "whose verify= names it"
            % (whose, _clean(unverified.verify_message or _reason(unverified), 120))
        )
    if at_proxy and proxy is not None:
        if tunnel == "asked" and timed_out:
            return ProxyError(
                "the proxy %s did not answer within %g s when asked to connect to %s"
                % (proxy, connect_timeout, target),
                proxy,
            )
        if timed_out:
            why = "it did not answer within %g s" % connect_timeout
        else:
            why = _plain_reason(causes)
        return ProxyError("cannot reach the proxy %s (for %s): %s" % (proxy, target, why), proxy)
    return TransportError("cannot reach %s: %s" % (target, _clean(_reason(exc))))


def _plain_reason(causes: List[BaseException]) -> str:
    """The innermost operating system error in words ("connection refused"),
    else the innermost cause's text."""
    for cause in reversed(causes):
        if isinstance(cause, OSError) and isinstance(cause.strerror, str) and cause.strerror:
            return _clean(cause.strerror[0].lower() + cause.strerror[1:], 120)
    return _clean(_reason(causes[-1]), 200)


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
        if not isinstance(inner, BaseException):
            # urllib3's ProxyError is ("Unable to connect to proxy", cause).
            inner = next((arg for arg in exc.args if isinstance(arg, BaseException)), None)
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


def _read_chunks(exchange: _Exchange, decode: bool = True) -> Iterator[bytes]:
    """Yield the body as it arrives, its Content-Encoding undone if
    ``decode``; raise TransportError on a stall, a reset or a truncated
    body, WaitTimeoutError at the deadline."""
    response = cast(requests.Response, exchange.response)
    read, decoded = _raw_chunks(response, decode)
    decoder = None
    if decode and not decoded:
        decoder = _content_decoder(response.headers.get("Content-Encoding", ""))
    client = exchange.client
    deadline, clock = client.deadline, client.clock

    def ended() -> Optional[MunsitError]:
        # Looked at before every read: the plain test first, and what it
        # means only once something is up.
        if exchange.expired is None and (deadline is None or clock() < deadline):
            return None
        return exchange.ended("before the end")

    while True:
        error = ended()
        if error is not None:
            raise error
        try:
            data = read()
        except Exception as exc:  # whatever a broken connection makes http.client raise
            _scrub(exc)
            # The watchdog's cut, the deadline, or else the read's own failure.
            raise ended() or _read_failure(exc, client.read_timeout) from exc
        if not data:
            error = ended()
            if error is not None:  # the watchdog cut it
                raise error
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


def _read_failure(exc: Exception, read_timeout: float) -> TransportError:
    """The TransportError for a read of a body that raised ``exc``."""
    if isinstance(exc, (socket.timeout, urllib3.exceptions.ReadTimeoutError)):
        return TransportError("no data for %g seconds: the connection stalled" % read_timeout)
    if isinstance(exc, http.client.IncompleteRead):
        return TransportError("the server cut the body short")
    return TransportError("the connection broke: %s" % _clean(_reason(exc)))


# --------------------------------------------------------------------------
# Progress stream: a job's events over one connection (iter_events), and
# what one connection leaves for the next.
# --------------------------------------------------------------------------


class _StreamState:
    """What one connection leaves for the next: the last event id, the
    server's ``retry:`` delay, the unknown stages already logged, and whether
    any connection was made."""

    __slots__ = ("last_event_id", "retry_ms", "warned", "connected")

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry_ms = None  # type: Optional[int]
        self.warned = set()  # type: Set[Any]
        self.connected = False

    def server_retry(self) -> Optional[float]:
        """The server's ``retry:`` delay in seconds, if it sent one."""
        return None if self.retry_ms is None else self.retry_ms / 1000.0


def _open(client: _Call, denoise_id: str, resume: _StreamState) -> _Exchange:
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
        response.close()
        raise ProtocolError(
            "expected Content-Type text/event-stream, got %r (is a proxy in the way?)"
            % _clean(content_type or "nothing", 80)
        )
    return response


def _events(client: _Call, denoise_id: str, resume: _StreamState) -> Generator[Event, None, None]:
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
                    response.close()
                    yield event
                    return
                yield event
        raise TransportError("the server closed the stream before the job's final event")
    finally:
        response.close()


def _owned_events(client: _Call, denoise_id: str) -> Generator[Event, None, None]:
    """iter_events' generator: one connection, and the client closed after."""
    try:
        yield from _events(client, denoise_id, _StreamState())
    finally:
        client.close()


# --------------------------------------------------------------------------
# Retry policy: when to try again, and following a job to its end
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

    # The decisions of the loops that try again (wait's, submit's, the job
    # list's, download's), kept here as urllib3's Retry keeps its own: each
    # loop is a try/except that calls _pause_after.

    @staticmethod
    def _retryable(error: MunsitError) -> bool:
        """Whether ``error`` may go away if the same request is sent again."""
        if isinstance(error, _Aborted):
            return False
        if isinstance(error, (ProxyAuthenticationError, CertificateError)):
            # A login the proxy refused, or a certificate that fails
            # verification, fails again; each refused login counts towards
            # locking the account.
            return False
        if isinstance(error, TransportError):
            return not isinstance(error.__cause__, requests.exceptions.SSLError)
        if isinstance(error, APIError):
            return error.status_code == 429 or 500 <= error.status_code <= 599
        return False

    def _leaves_time(self, seconds: float, deadline: Optional[float]) -> bool:
        """Whether a pause of ``seconds`` ends before ``deadline`` (a reading
        of this policy's clock; None: no deadline)."""
        return deadline is None or seconds < deadline - self.clock()

    def _pause_after(
        self,
        error: MunsitError,
        failures: int,
        deadline: Optional[float],
        *,
        advanced: bool = False,
        server_retry: Optional[float] = None,
        doing: str = "trying again",
    ) -> int:
        """After an attempt that failed with ``error``, ``failures`` failed in
        a row before it: sleep before the next attempt and return the count
        of failures in a row, this one included (1 if the attempt
        ``advanced``: it brought something new).  Raise ``error`` itself
        when it is not worth another attempt (:meth:`_retryable`), after
        ``max_retries`` retries, or when its Retry-After is longer than
        ``max_retry_after``; WaitTimeoutError when the pause would reach
        ``deadline`` (on this policy's clock).  ``server_retry`` is the
        stream's ``retry:`` delay in seconds; ``doing`` names the next
        attempt in the log."""
        failures = 1 if advanced else failures + 1
        if failures > self.max_retries or not self._retryable(error):
            raise error
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None and retry_after > self.max_retry_after:
            raise error
        delay = min(self.delay(failures, retry_after, server_retry), _MAX_SLEEP)
        if not self._leaves_time(delay, deadline):
            raise WaitTimeoutError(
                "the deadline would pass before the next attempt (in %.1f s) after: %s"
                % (delay, error)
            ) from error
        logger.log(
            logging.INFO if failures == 1 else logging.WARNING,
            "%s in %.2f s (retry %d of %d): %s",
            _printable(doing),
            delay,
            failures,
            self.max_retries,
            _printable(str(error)),
        )
        self.sleep(delay)
        return failures


class _SeenProgress:
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


def _follow_to_end(
    client: _Call,
    job: str,
    on_progress: Optional[Callable[[ProcessingEvent], Any]],
    policy: RetryPolicy,
) -> DoneEvent:
    """wait()'s loop: connect, read, and reconnect until a terminal event."""
    resume = _StreamState()
    news = _SeenProgress()
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
            failures = policy._pause_after(
                exc,
                failures,
                client.deadline,
                advanced=advanced,
                server_retry=resume.server_retry(),
                doing="reconnecting" if resume.connected else "trying again",
            )


# --------------------------------------------------------------------------
# The file sent: its checks, its name and its multipart body
# --------------------------------------------------------------------------

#: The largest file submit() sends (200 MiB).  The API's "200 MB" may mean
#: 10**6 or 2**20 bytes: only what is surely too large is refused here, and
#: the server judges the rest.
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
#: The longest audio the API takes, in seconds (15 minutes).
MAX_AUDIO_SECONDS = 15 * 60

_AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
}
_VIDEO_TYPES = {
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
    "m4v": "video/x-m4v",
}
# http.client asks a body for 8 KB at a time; larger pieces mean far fewer
# system calls, and it sends whatever a read returns.
_UPLOAD_BLOCK = 1024 * 1024
_ANSWER_LIMIT = 64 * 1024
_LIST_LIMIT_BYTES = 64 * 1024 * 1024
# The lookup after a lost answer: how many recent jobs it reads, and how long
# it waits before its second look (the server may still be writing the record).
_LOOKUP_RECORDS = 100
_LOOKUP_PAGES = 20
_LOOKUP_PAUSE = 3.0
# How far the server's record times may disagree with its Date header.
_LOOKUP_MARGIN = 30.0


class _Source:
    """The file to upload, opened and checked once; each attempt rewinds it.

    Raises ConfigurationError, before any byte is sent, for what the API
    would refuse or the upload could not send whole."""

    __slots__ = (
        "name",
        "size",
        "content_type",
        "content",
        "_handle",
        "_start",
        "_owned",
        "_stamp_read",
    )

    def __init__(self, path: Any, check: bool) -> None:
        self.size = 0  # type: int
        #: Its content, once identify() has read it.
        self.content = None  # type: Optional[_Content]
        self._stamp_read = None  # type: Optional[Tuple[int, int, int, int]]
        if isinstance(path, (str, os.PathLike)):
            shown = os.fspath(path)
            shown = shown if isinstance(shown, str) else os.fsdecode(shown)
            try:
                # Judged before it is opened: opening a FIFO would block.
                if not _stat.S_ISREG(os.stat(shown).st_mode):
                    raise ConfigurationError("cannot upload %s: it is not a regular file" % shown)
                handle = open(shown, "rb")  # noqa: SIM115 (closed by close())
            except (OSError, ValueError) as exc:
                if isinstance(exc, ConfigurationError):
                    raise
                reason = getattr(exc, "strerror", None) or str(exc)
                raise ConfigurationError(
                    "cannot read %s: %s" % (_printable(shown), reason)
                ) from None
            self._owned = True
        elif hasattr(path, "read") and isinstance(getattr(path, "name", None), (str, bytes)):
            handle = path
            name = handle.name
            shown = name if isinstance(name, str) else os.fsdecode(name)
            self._owned = False
        else:
            raise ConfigurationError("path must be a file name or an open binary file with a name")
        self._handle = handle
        try:
            self._inspect(handle, shown, check)
        except BaseException:
            self.close()
            raise

    def _inspect(self, handle: Any, shown: str, check: bool) -> None:
        self.name = os.path.basename(shown) or "audio"
        try:
            mode = os.fstat(handle.fileno()).st_mode  # type: Optional[int]
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            mode = None  # a file object without a descriptor: judged by what it reads
        if mode is not None and not _stat.S_ISREG(mode):
            raise ConfigurationError("cannot upload %s: it is not a regular file" % shown)
        try:
            self._start = handle.tell()
            end = handle.seek(0, os.SEEK_END)
            handle.seek(self._start)
            probe = handle.read(0)
        except (AttributeError, OSError, ValueError) as exc:
            raise ConfigurationError(
                "cannot upload %s: it must be a readable, seekable binary file (%s)" % (shown, exc)
            ) from None
        if not isinstance(probe, bytes):
            raise ConfigurationError("cannot upload %s: open it in binary mode ('rb')" % shown)
        self.size = end - self._start
        if self.size <= 0:
            raise ConfigurationError("cannot upload %s: it is empty" % shown)
        extension = os.path.splitext(self.name)[1][1:].lower()
        self.content_type = (
            _AUDIO_TYPES.get(extension) or _VIDEO_TYPES.get(extension) or "application/octet-stream"
        )
        if not check:
            return
        if self.size > MAX_UPLOAD_BYTES:
            raise ConfigurationError(
                "cannot upload %s: %s is over the API's 200 MB limit" % (shown, _size(self.size))
            )
        if extension not in _AUDIO_TYPES and extension not in _VIDEO_TYPES:
            raise ConfigurationError(
                "cannot upload %s: .%s is not an audio (%s) or video (%s) type the API lists; "
                "check=False sends it anyway"
                % (shown, extension, ", ".join(_AUDIO_TYPES), ", ".join(_VIDEO_TYPES))
            )
        if extension == "wav":
            seconds = _wav_seconds(handle, self._start, self.size)
            handle.seek(self._start)
            if seconds is not None and seconds > MAX_AUDIO_SECONDS:
                raise ConfigurationError(
                    "cannot upload %s: it is %.1f minutes long, over the API's 15-minute limit"
                    % (shown, seconds / 60.0)
                )

    def rewind(self) -> None:
        self._handle.seek(self._start)

    def identify(self, check: Callable[[], None]) -> "_Content":
        """The content's SHA-256 and size, read once; ``check`` may raise
        to stop the reading (a deadline, a stopped run)."""
        if self.content is not None:
            return self.content
        import hashlib

        stamp = self._stamp()
        digest = hashlib.sha256()
        self.rewind()
        left = self.size
        while left > 0:
            check()
            piece = self.read(min(_UPLOAD_BLOCK, left))
            if not piece:
                raise ConfigurationError(
                    "%s got shorter while it was being read" % _printable(self.name)
                )
            digest.update(piece)
            left -= len(piece)
        self.rewind()
        if self._stamp() != stamp:
            raise ConfigurationError("%s changed while it was being read" % _printable(self.name))
        self._stamp_read = stamp
        self.content = _Content(digest.hexdigest(), self.size)
        return self.content

    def known_as(self, content: "_Content") -> None:
        """Take the content a journal knew this file by (its stat matched),
        without reading it; a change from now on is still caught."""
        self.content = content
        self._stamp_read = self._stamp()

    def check_unchanged(self) -> None:
        """Raise if the file changed since identify() read it: what is sent
        would not be the content its tag names."""
        if self._stamp_read is not None and self._stamp() != self._stamp_read:
            raise ConfigurationError(
                "%s changed after it was read, while it was being sent; nothing was taken: "
                "run again when it is complete" % _printable(self.name)
            )

    def _stamp(self) -> Optional[Tuple[int, int, int, int]]:
        """What changes when a file is written: size, times, inode, device."""
        try:
            info = os.fstat(self._handle.fileno())
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        return (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)

    def read(self, amount: int) -> bytes:
        data = self._handle.read(amount)
        return data if isinstance(data, bytes) else b""

    def close(self) -> None:
        if self._owned:
            self._handle.close()


class _NoFile(_Source):
    """No file at hand: the pipeline follows a job given by its id, and has
    nothing to send (asked to, it says so)."""

    __slots__ = ()

    def __init__(self, job: str) -> None:  # nothing to open
        self.name = job
        self.size = 0
        self.content_type = ""
        self.content = None
        self._handle = cast(Any, None)
        self._start = 0
        self._owned = False
        self._stamp_read = None

    def identify(self, check: Callable[[], None]) -> "_Content":
        raise ConfigurationError("job %s was given by its id: there is no file to send" % self.name)

    def read(self, amount: int) -> bytes:
        raise ConfigurationError("job %s was given by its id: there is no file to send" % self.name)


def _wav_seconds(handle: Any, start: int, size: int) -> Optional[float]:
    """How long a WAV file says it is, from its header; None if it does not
    say (another format, a streamed WAV without sizes, a damaged header).

    Only WAV can be measured with the standard library alone; the server
    judges the length of every other format."""
    import struct

    handle.seek(start)
    riff = handle.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return None
    position = 12
    byte_rate = 0
    for _ in range(64):  # chunks before "data": a handful in real files
        header = handle.read(8)
        if len(header) < 8:
            return None
        chunk, length = cast(Tuple[bytes, int], struct.unpack("<4sI", header))
        position += 8
        if chunk == b"fmt ":
            fmt = handle.read(min(length, 64))
            if len(fmt) < 12:
                return None
            byte_rate = cast(int, struct.unpack_from("<I", fmt, 8)[0])
            handle.seek(start + position + length + (length & 1))
        elif chunk == b"data":
            if not byte_rate or length in (0, 0xFFFFFFFF):
                return None
            # A header may claim more than the file holds: count what is there.
            return min(length, size - position) / float(byte_rate)
        else:
            handle.seek(start + position + length + (length & 1))
        position += length + (length & 1)
    return None


def _form_quote(name: str) -> str:
    """A file name as a multipart ``filename="..."`` value, written as
    browsers write it (the WHATWG HTML multipart/form-data encoding).

    The name is sent as UTF-8.  A quote, a CR and an LF become %22, %0D and
    %0A, and a backslash is sent as it is: a backslash escape, which no
    browser writes, makes parsers that follow browsers (fetch's formData()
    in Node) refuse the body.  Another control character, which no header
    may hold, becomes %XX too."""
    out = []
    for char in name:
        if char == '"' or char < " " or char == "\x7f":
            out.append("%%%02X" % ord(char))
        else:
            out.append(char)
    return "".join(out)


class _MultipartBody:
    """A ``multipart/form-data`` body with one file part, read from the file
    as the connection sends it: never held whole in memory, and of an exact
    length, since many servers and proxies refuse a chunked upload.

    It is what :meth:`_Call.send` takes as a body: ``read`` and
    ``__len__``.  ``finished`` says whether every byte was handed to the
    connection, which tells a lost answer from an upload that never
    completed."""

    def __init__(
        self,
        source: _Source,
        name: str,
        boundary: str,
        report: Optional[Callable[[int, Optional[int]], Any]],
    ) -> None:
        self._source = source
        self._report = report
        self._head = (
            '--%s\r\nContent-Disposition: form-data; name="audio"; filename="%s"\r\n'
            "Content-Type: %s\r\n\r\n" % (boundary, _form_quote(name), source.content_type)
        ).encode("utf-8", "surrogateescape")
        self._tail = ("\r\n--%s--\r\n" % boundary).encode("ascii")
        self._left = source.size
        self._part = 0
        #: Bytes of the file read so far.
        self.sent = 0
        #: Whether every byte of the body was handed to the connection.
        self.finished = False
        source.rewind()

    def __len__(self) -> int:
        return len(self._head) + self._source.size + len(self._tail)

    def read(self, amount: int = -1) -> bytes:
        if self._part == 0:
            self._part = 1
            return self._head
        if self._part == 1:
            data = self._source.read(min(_UPLOAD_BLOCK, self._left))
            if not data:
                raise ConfigurationError(
                    "%s got shorter while it was being sent" % self._source.name
                )
            self._left -= len(data)
            self.sent += len(data)
            if not self._left:
                self._part = 2
                # Before the closing boundary: without it, no job.
                self._source.check_unchanged()
            if self._report is not None:
                self._report(self.sent, self._source.size)
            return data
        if self._part == 2:
            self._part = 3
            return self._tail
        self.finished = True
        return b""


# --------------------------------------------------------------------------
# Finding a job: content tags, the matcher, the account's recent jobs
# --------------------------------------------------------------------------

# The tag in an uploaded name: this prefix and the first 20 hex digits (80
# bits) of the content's SHA-256.  A stable format: later versions must
# recognise the jobs this one sent.
_TAG_PREFIX = "munsit-"
_TAG_DIGITS = 20
# Pages of the history: large for the first read back to the horizon, small
# for the first page of each later look, which usually finds what it knew.
_HISTORY_PAGE = 250
_REFRESH_PAGE = 10
# The most records one look reads, whatever the horizon: a server whose
# records carry no times must not make it read the whole account.
_HISTORY_MAX_RECORDS = 50000


class _Content:
    """A file's content: its SHA-256 and size.  ``key`` names it in the
    batch journal, ``lock_key`` is what a caller's ``lock`` gets, ``tag``
    goes into the uploaded name."""

    __slots__ = ("sha256", "size", "key", "lock_key", "tag")

    def __init__(self, sha256: str, size: int) -> None:
        self.sha256 = sha256
        self.size = size
        self.key = "%s:%d" % (sha256, size)
        self.lock_key = "munsit-progress:" + self.key
        self.tag = _TAG_PREFIX + sha256[:_TAG_DIGITS]


def _tagged_name(name: str, tag: str) -> str:
    """The name a file is sent under: the tag, a dot, its own name
    (``munsit-<hex>.interview.wav``).  First, so that a server that cuts
    long names short keeps it; the extension, by which the server tells
    audio from video, still ends the name."""
    return "%s.%s" % (tag, name)


# What the matcher says of a record.
_NO, _MAYBE, _YES = "no", "maybe", "yes"


class _Wanted:
    """What a lookup knows of the file whose job it looks for: its content
    (when tagged), the names it was sent under (when not), its size, the
    jobs that are never its, and since when its job can exist."""

    __slots__ = ("digits", "size", "names", "skeletons", "excluded", "since")

    def __init__(
        self,
        content: Optional[_Content],
        *,
        names: Iterable[str] = (),
        excluded: FrozenSet[str] = frozenset(),
        size: Optional[int] = None,
        since: Optional[float] = None,
    ) -> None:
        self.digits = content.tag[len(_TAG_PREFIX) :] if content is not None else None
        self.size = content.size if content is not None else size
        names = list(names)
        self.names = _name_forms(names)
        self.skeletons = {_skeleton(name) for name in names}
        self.excluded = excluded
        #: Seconds since the epoch, on the server's clock.
        self.since = since


def _match(record: JobRecord, wanted: _Wanted) -> str:
    """Whether ``record`` is the wanted file's job: _YES, _MAYBE or _NO.

    With a tag: its digits in the stored name, compared without case (a
    server may lower-case a name, replace its dots, add a prefix), and the
    same size; never by name and size alone.  Without: one of the names it
    was sent under, as a server may have stored it, and the same size; a
    name that differs only outside ASCII letters and digits is _MAYBE."""
    if record.denoise_id in wanted.excluded:
        return _NO
    if record.audio_size is not None and record.audio_size != wanted.size:
        return _NO
    if wanted.since is not None:
        created = _epoch(record.created_at)
        if created is not None and created < wanted.since:
            return _NO
    name = record.file_name or ""
    if wanted.digits is not None:
        return _YES if wanted.digits in name.lower() else _NO
    if name in wanted.names:
        return _YES
    if record.audio_size == wanted.size and _skeleton(name) in wanted.skeletons:
        return _MAYBE
    return _NO


def _chosen_job(jobs: List[JobRecord]) -> Optional[JobRecord]:
    """Of one content's jobs (newest first), the one to adopt: the newest
    that succeeded, else the newest still going, else the newest failed."""
    for wanted in ("success", None):
        for job in jobs:
            if job.status == wanted or (wanted is None and job.status != "failed"):
                return job
    return jobs[0] if jobs else None


def _name_forms(names: Iterable[str]) -> Set[str]:
    """The ways a server may have stored a file name it was sent: as it is,
    as written in the form (%22 for a quote, which not every parser undoes),
    that with each backslash read as an escape (a quoted-pair, as the email
    package reads it), and each of these as UTF-8 bytes read as Latin-1
    (what some multipart parsers, busboy's default among them, make of
    UTF-8) or with replacement characters."""
    forms = set()  # type: Set[str]
    for name in names:
        written = _form_quote(name)
        for form in (name, written, re.sub(r"\\(.)", r"\1", written)):
            sent = form.encode("utf-8", "surrogateescape")
            forms.update((form, sent.decode("latin-1"), sent.decode("utf-8", "replace")))
    return forms


def _skeleton(name: str) -> str:
    """A name's ASCII letters, digits and dots, lower-cased: what survives
    any mangling of the rest."""
    return re.sub(r"[^a-z0-9.]", "", name.lower())


def _created(job: JobRecord) -> float:
    created = _epoch(job.created_at)
    return created if created is not None else math.inf


class _JobHistory:
    """The account's jobs back to a horizon, read newest first in pages the
    first time, and each later time only as far as the first job already
    known: a batch reads its history once and shares it between threads.

    A page shorter than asked does not end the read (a server may cap its
    pages); only an empty page, a job older than the horizon (on the
    server's clock) or a known job does.  A job that new arrivals pushed
    onto the next page counts once."""

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._jobs = {}  # type: Dict[str, JobRecord]
        self._lock = threading.Lock()
        #: Whether the history was read back to the horizon once.
        self.loaded = False
        #: Records and requests read so far (for the lookup's cost).
        self.records_read = 0
        self.requests = 0

    def refresh(self, client: "_Call", policy: RetryPolicy) -> None:
        """Read what is new since the last read (the first time: back to
        the horizon)."""
        with self._lock:
            known = frozenset(self._jobs) if self.loaded else frozenset()
            offset, limit, edge = 0, _REFRESH_PAGE if self.loaded else _HISTORY_PAGE, None
            seen = set()  # type: Set[str]
            while offset < _HISTORY_MAX_RECORDS:
                records, skew = _list_again(client, limit, offset, policy)
                self.requests += 1
                self.records_read += len(records)
                if not records:
                    break
                if edge is None:
                    edge = time.time() + skew - self.horizon
                ended = news = False
                for record in records:
                    ended = ended or record.denoise_id in known
                    news = news or record.denoise_id not in seen
                    seen.add(record.denoise_id)
                    self._jobs[record.denoise_id] = record
                    created = _epoch(record.created_at)
                    ended = ended or (created is not None and created < edge)
                if ended:
                    break
                if not news:
                    # A server that ignores the offset repeats its page.
                    logger.warning(
                        "the job list repeats itself past offset %d; read no further", offset
                    )
                    break
                offset += len(records)
                limit = _HISTORY_PAGE
            else:
                logger.warning(
                    "read %d jobs without reaching the horizon; older ones are not looked at",
                    offset,
                )
            self.loaded = True

    def matches(self, wanted: _Wanted) -> List[JobRecord]:
        """The known jobs that are the wanted file's, newest first."""
        with self._lock:
            found = [job for job in self._jobs.values() if _match(job, wanted) is _YES]
        found.sort(key=_created, reverse=True)
        return found

    def ids(self) -> FrozenSet[str]:
        with self._lock:
            return frozenset(self._jobs)


def _list_again(
    client: "_Call", limit: Optional[int], offset: int, policy: RetryPolicy
) -> Tuple[List[JobRecord], float]:
    """One page of GET /denoise, tried again after a dropped connection, a
    429 or a 5xx, as the policy allows."""
    failures = 0
    while True:
        try:
            return _list(client, limit, offset)
        except (TransportError, APIError) as exc:
            failures = policy._pause_after(exc, failures, client.deadline)


# --------------------------------------------------------------------------
# Upload: submit() (or adopt) and list_jobs()
# --------------------------------------------------------------------------


def content_tag(path: Any) -> str:
    """The tag that :func:`submit` puts in the name a file is sent under:
    ``munsit-`` and the first 20 lower-case hex digits of the SHA-256 of
    the file's bytes (from its current position, for an open file).

    A stable format: jobs sent by this version are recognised by later
    ones.  Search for it in :func:`list_jobs`' ``file_name``\\ s (without
    case) to find the jobs of a file.

    Example::

        tag = content_tag("a.wav")
        mine = [job for job in list_jobs(limit=100) if tag in (job.file_name or "").lower()]
    """
    source = _Source(path, False)
    try:
        return source.identify(lambda: None).tag
    finally:
        source.close()


class _JobOptions:
    """How one call (or one batch) finds and keeps its jobs: set once, read
    by each file's pipeline.  ``history`` is shared by a batch's files."""

    __slots__ = ("tag", "reuse", "retry_failed", "lock", "history", "max_size")

    def __init__(
        self,
        tag: bool = True,
        reuse: bool = True,
        retry_failed: bool = False,
        horizon: float = DEFAULT_HORIZON,
        lock: Optional[Callable[[str], Any]] = None,
        max_size: Optional[int] = None,
    ) -> None:
        if max_size is None:
            max_size = DEFAULT_MAX_DOWNLOAD
        if not isinstance(horizon, (int, float)) or not 0 < horizon < math.inf:
            raise ConfigurationError("horizon must be a positive number of seconds")
        if lock is not None and not callable(lock):
            raise ConfigurationError("lock must be a callable that takes a key")
        if not isinstance(max_size, int) or max_size < 0:
            raise ConfigurationError("max_size must be a number of bytes >= 0")
        self.tag = bool(tag)
        self.reuse = bool(reuse)
        self.retry_failed = bool(retry_failed)
        self.lock = lock
        self.history = _JobHistory(float(horizon))
        self.max_size = max_size


class _Hooks:
    """What a caller adds to one file's pipeline (upload, follow, save).
    Each does nothing here; a batch and the command line override them, so
    that the pipeline never learns what a journal or a display is."""

    #: A job this file was submitted as already: follow it, send nothing.
    known_id = None  # type: Optional[str]
    #: When an upload whose answer was never seen began (time.time()), if
    #: one may have: an untagged upload looks it up before sending again.
    sent_at = None  # type: Optional[float]
    #: Jobs that are never this file's: earlier attempts, other inputs' jobs.
    excluded = frozenset()  # type: FrozenSet[str]
    #: Other names the file was sent under (it may have been renamed).
    names = frozenset()  # type: FrozenSet[str]
    #: The output's folder was swept of dead runs' temporary files already.
    swept = False

    def before_send(self, client: "_Call", policy: RetryPolicy, name: str) -> None:
        """Right before each POST; may wait, or raise to send nothing."""

    def refused(self, error: MunsitError, policy: RetryPolicy) -> None:
        """The server refused an upload (429, 402, ...)."""

    def unsent(self) -> None:
        """The last upload certainly did not create a job."""

    def submitted(self, submission: Submission) -> None:
        """The file's job is known: sent now, or found (``adopted``)."""

    def output_for(self, done: DoneEvent) -> Optional[Tuple[str, str]]:
        """The job is done, its result not saved yet: where to save it (the
        path to show, the file to write), or None for the pipeline's own
        target."""
        return None

    def result_gone(self, error: "APIError", job: str) -> "APIError":
        """The error for a known job's result that cannot be fetched any
        more (403, 404, 410)."""
        return _result_gone(error, job)


def _submit(
    client: "_Call",
    source: _Source,
    report: Optional[Callable[[int, Optional[int]], Any]],
    policy: RetryPolicy,
    options: _JobOptions,
    hooks: _Hooks,
) -> Submission:
    """The file's job: the one the account has for this content, or a new
    one, POSTed until the server certainly has it once."""
    content = None  # type: Optional[_Content]
    if options.tag or options.lock is not None or source.content is not None:
        content = source.identify(lambda: client.check_time("while the file was read"))
    name = _tagged_name(source.name, content.tag) if options.tag and content else source.name
    tagged = options.tag and options.reuse and content is not None
    failures = 0
    with _Held(options.lock, content, client) as held:
        if hooks.sent_at is not None and (
            not tagged or time.time() - hooks.sent_at > options.history.horizon - _LOOKUP_MARGIN
        ):
            # An earlier run may have sent it without seeing the answer, and
            # the look by tag does not reach back that far (or there is none).
            found = _look_up(
                client, source, name, content, hooks.sent_at, policy, options, hooks, window=True
            )
            if found is not None:
                return found
            hooks.unsent()
        while True:
            before = frozenset()  # type: FrozenSet[str]
            if tagged:
                # Before each attempt: another caller may have sent it while
                # this one waited, with the lock given back.
                found = _adoptable(client, policy, options, hooks, cast(_Content, content))
                if found is not None:
                    return found
                before = options.history.ids()
            submission, looked, error = _send_once(
                client, source, name, content, report, policy, options, hooks, before
            )
            if submission is not None:
                break
            # The caller's lock is given back while the pause lasts (and
            # for good if the policy gives up).
            with held.given_back():
                failures = policy._pause_after(
                    cast(MunsitError, error),
                    failures,
                    client.deadline,
                    doing="sending %s again" % name,
                )
    if tagged and not looked:
        _warn_if_doubled(
            client, policy, options, cast(_Content, content), before, submission.denoise_id
        )
    return submission


class _Held:
    """The caller's lock for one content (``lock=``): held around the look
    and the upload, given back during the pauses between attempts, so that
    a lock with a lifetime (redis-py's) does not run out while a
    Retry-After is obeyed."""

    def __init__(
        self, lock: Optional[Callable[[str], Any]], content: "Optional[_Content]", client: "_Call"
    ) -> None:
        self._lock = lock if content is not None else None
        self._key = content.lock_key if content is not None else ""
        self._client = client
        self._guard = None  # type: Any

    def __enter__(self) -> "_Held":
        self._take()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._give()

    @contextlib.contextmanager
    def given_back(self) -> Iterator[None]:
        self._give()
        yield
        self._take()

    def _take(self) -> None:
        if self._lock is None:
            return
        try:
            guard = self._lock(self._key)
            guard.__enter__()
        except MunsitError:
            raise
        except Exception as exc:
            raise TransportError(
                "could not take the lock %s: %s" % (self._key, _clean(_reason(exc)))
            ) from exc
        self._guard = guard
        # How long the lock is waited for is the lock's own setting (redis-py's
        # blocking_timeout); the deadline is checked once it is held.
        try:
            self._client.check_time("while the lock was waited for")
        except BaseException:
            self._give()
            raise

    def _give(self) -> None:
        guard, self._guard = self._guard, None
        if guard is None:
            return
        try:
            guard.__exit__(None, None, None)
        except Exception as exc:  # an expired redis lock: the job is not at stake
            logger.warning(
                "could not give back the lock %s: %s", self._key, _printable(_reason(exc))
            )


def _adoptable(
    client: "_Call",
    policy: RetryPolicy,
    options: _JobOptions,
    hooks: _Hooks,
    content: "_Content",
) -> Optional[Submission]:
    """This content's job, if the account has one to adopt; raise
    DenoiseFailedError for a failed one the caller does not send again."""
    options.history.refresh(client, policy)
    jobs = options.history.matches(_Wanted(content, excluded=hooks.excluded))
    chosen = _chosen_job(jobs)
    if chosen is None:
        return None
    if chosen.status == "failed":
        if options.retry_failed:
            logger.info(
                "job %s of this content failed; sending it again (retry_failed=True)",
                chosen.denoise_id,
            )
            return None
        error = DenoiseFailedError(chosen.error or "no reason given")
        error.denoise_id = chosen.denoise_id
        raise error
    logger.info(
        "found job %s (%s) of this content: not sent again", chosen.denoise_id, chosen.status
    )
    return Submission(
        chosen.denoise_id,
        chosen.denoise_id,
        chosen.file_name or content.tag,
        content.size,
        adopted=True,
    )


def _warn_if_doubled(
    client: "_Call",
    policy: RetryPolicy,
    options: _JobOptions,
    content: "_Content",
    before: FrozenSet[str],
    ours: str,
) -> None:
    """Look once more after an upload: another job of this content that
    appeared meanwhile is a second charge (two callers looked at the same
    moment, without a lock), never to be hidden."""
    try:
        options.history.refresh(client, policy)
    except (TransportError, APIError, ProtocolError, WaitTimeoutError) as exc:
        logger.info("could not look for a second job of this content: %s", _printable(str(exc)))
        return
    others = options.history.matches(_Wanted(content, excluded=before | {ours}))
    if others:
        logger.warning(
            "%s was sent twice at the same moment and both jobs are billed: %s (this call's) "
            "and %s; %s",
            content.tag,
            ours,
            ", ".join(job.denoise_id for job in others),
            "pass lock= where callers may run together"
            if options.lock is None
            else "the callers' locks did not keep them apart (is the lock shared?)",
        )


def _send_once(
    client: "_Call",
    source: _Source,
    name: str,
    content: "Optional[_Content]",
    report: Optional[Callable[[int, Optional[int]], Any]],
    policy: RetryPolicy,
    options: _JobOptions,
    hooks: _Hooks,
    before: FrozenSet[str],
) -> Tuple[Optional[Submission], bool, Optional[MunsitError]]:
    """One POST of the file under ``name``: (its Submission, whether it was
    found by a look after a lost answer, None), or (None, False, the error)
    when the server certainly did not take it; raise what must not be sent
    again."""
    hooks.before_send(client, policy, name)
    began = time.time()
    boundary = "munsit-%s" % os.urandom(16).hex()
    bodies = []  # type: List[_MultipartBody]
    # A consumed body sent again would be an empty upload that looks like
    # success: every attempt and every redirect gets a new one.
    fresh_body = functools.partial(_fresh_body, bodies, source, name, boundary, report)

    headers = {
        "Accept": "application/json",
        "Content-Type": "multipart/form-data; boundary=%s" % boundary,
        "User-Agent": _USER_AGENT,
    }  # type: Dict[str, Union[str, bytes]]
    sent = False
    client.check_time("before the upload")
    try:
        response = client.send("POST", client.url("/denoise"), headers, body=fresh_body)
        sent = bool(bodies) and bodies[-1].finished
        status = response.status_code
        if status == 200:
            return _submission(client, response, name, source.size), False, None
        error = client.error(response, for_job=False)  # type: MunsitError
        hooks.refused(error, policy)
        if status not in (429, 503) and not 500 <= status <= 599:
            hooks.unsent()  # refused: certainly not taken
            raise error
        # 429 and 503 say the job was not taken; another 5xx may come from a
        # proxy after the server took it.
        sent = status not in (429, 503)
    except TransportError as exc:
        error = exc
        sent = bool(bodies) and bodies[-1].finished
    except WaitTimeoutError as exc:
        if bodies and bodies[-1].finished:
            raise SubmissionUnknownError(
                "the deadline passed after %s was sent and before the server answered; "
                "the job may exist (munsit-progress list)" % _printable(name)
            ) from exc
        raise
    if sent:
        logger.info("the answer to the upload of %s was lost: looking the job up", _printable(name))
        found = _look_up(
            client, source, name, content, began, policy, options, hooks, error, before
        )
        if found is not None:
            return found, True, None
    hooks.unsent()  # certainly not taken: a rerun need not look
    return None, False, error


class _Gate:
    """What a batch's uploads share: after a 429 every new upload waits for
    its Retry-After, and after a 402 (the wallet is empty) none is sent,
    while jobs already submitted are followed to their end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        self.refused = None  # type: Optional[APIError]
        self.throttled = None  # type: Optional[APIError]

    def learn(self, error: MunsitError, policy: RetryPolicy) -> None:
        if isinstance(error, PaymentRequiredError):
            self.refused = error
        elif isinstance(error, APIError) and error.status_code == 429:
            pause = error.retry_after if error.retry_after is not None else policy.backoff_max
            if pause > policy.max_retry_after:
                # Longer than one call would wait: it gives up, and so do
                # the uploads behind it, rather than the whole run waiting.
                self.throttled = error
                return
            with self._lock:
                self._until = max(self._until, policy.clock() + pause)

    def wait_turn(self, client: "_Call", policy: RetryPolicy) -> None:
        """Return when an upload may start; raise if none may."""
        while True:
            if self.refused is not None:
                raise PaymentRequiredError(
                    402,
                    self.refused.error_code,
                    "not sent: an earlier upload of this run was refused (%s)"
                    % (self.refused.error_message or "payment required"),
                )
            if self.throttled is not None:
                raise APIError(
                    429,
                    self.throttled.error_code,
                    "not sent: the API asked this run to wait %s seconds, more than it waits "
                    "(max_retry_after)" % self.throttled.retry_after,
                    self.throttled.retry_after,
                )
            client.check_time("before the upload")
            with self._lock:
                wait = self._until - policy.clock()
            if wait <= 0:
                return
            if not policy._leaves_time(wait, client.deadline):
                raise WaitTimeoutError("the deadline would pass while uploads are paused (429)")
            policy.sleep(min(wait, 1.0))


def _fresh_body(
    made: List[_MultipartBody],
    source: _Source,
    name: str,
    boundary: str,
    report: Optional[Callable[[int, Optional[int]], Any]],
) -> _MultipartBody:
    made.append(_MultipartBody(source, name, boundary, report))
    return made[-1]


def _submission(client: "_Call", response: _Exchange, name: str, size: int) -> Submission:
    payload = client.read_json(response, _ANSWER_LIMIT, "the answer to the upload")
    denoise_id = payload.get("denoiseId") if isinstance(payload, dict) else None
    canonical = _canonical_uuid(denoise_id) if isinstance(denoise_id, str) else None
    if canonical is None:
        raise ProtocolError(
            "the answer to the upload has no denoiseId: %s" % _clean(json.dumps(payload))
        )
    job_id = payload.get("jobId")
    return Submission(canonical, job_id if isinstance(job_id, str) else canonical, name, size)


def _look_up(
    client: "_Call",
    source: _Source,
    name: str,
    content: "Optional[_Content]",
    began: float,
    policy: RetryPolicy,
    options: _JobOptions,
    hooks: _Hooks,
    lost: Optional[MunsitError] = None,
    before: FrozenSet[str] = frozenset(),
    window: bool = False,
) -> Optional[Submission]:
    """The job an upload begun at ``began`` (time.time()) created, if the
    account's jobs show it; None if they show none, twice a few seconds
    apart; SubmissionUnknownError if they cannot say.

    A tagged upload's job is a job with its tag that was not there before
    it (the history read before the upload says which were), or, without
    that history (or with ``window``), one created since it began.  An untagged upload's is one
    created since it began with one of the names it was sent under; a job
    of its size whose name differs only outside ASCII letters and digits
    makes the answer unsure, never a reason to send again."""
    names = [name] + sorted(hooks.names)
    known = before | hooks.excluded
    wanted = _Wanted(
        content if options.tag else None,
        names=names,
        excluded=known,
        size=source.size,
    )
    for look in range(2):
        if look:
            if not policy._leaves_time(_LOOKUP_PAUSE, client.deadline):
                raise SubmissionUnknownError(
                    "%s was sent but its answer was lost, and the deadline leaves no time "
                    "to look the job up" % _printable(name)
                ) from lost
            policy.sleep(_LOOKUP_PAUSE)
        try:
            if options.tag and options.history.loaded and not window:
                options.history.refresh(client, policy)
                found, maybe = options.history.matches(wanted), []  # type: ignore[var-annotated]
            else:
                found, maybe = _jobs_since(client, began, wanted)
        except (TransportError, APIError, ProtocolError, WaitTimeoutError) as exc:
            raise SubmissionUnknownError(
                "%s was sent but its answer was lost, and the job could not be looked up: %s"
                % (_printable(name), exc)
            ) from exc
        if found and (options.tag or len(found) == 1):
            job = found[-1]  # the oldest: the first of the uploads that got through
            if len(found) > 1:
                logger.warning(
                    "%s was sent more than once and each job is billed: %s",
                    _printable(name),
                    ", ".join(record.denoise_id for record in found),
                )
            logger.info("found the job of %s: %s", _printable(name), job.denoise_id)
            return Submission(job.denoise_id, job.denoise_id, name, source.size)
        if found or maybe:
            raise SubmissionUnknownError(
                "%s was sent but its answer was lost, and %s"
                % (
                    _printable(name),
                    "several jobs could be it"
                    if found
                    else "jobs of its size but another name were created meanwhile",
                ),
                found + maybe,
            ) from lost
    return None


def _jobs_since(
    client: "_Call", began: float, wanted: "_Wanted"
) -> Tuple[List[JobRecord], List[JobRecord]]:
    """The jobs created since ``began`` that are this upload, and those that
    may be it, newest first; read in pages back to the first older job.
    A page shorter than asked does not end the list (a server may cap
    pages), and a job that new arrivals pushed onto the next page counts
    once."""
    found = []  # type: List[JobRecord]
    maybe = []  # type: List[JobRecord]
    seen = set()  # type: Set[str]
    offset = 0
    for _ in range(_LOOKUP_PAGES):
        records, skew = _list(client, _LOOKUP_RECORDS, offset)
        if not records:
            return found, maybe
        if wanted.since is None:
            # Record times are the server's: compare them on its clock.
            wanted.since = began + skew - _LOOKUP_MARGIN
        reached_older = False
        for record in records:
            if record.denoise_id in seen:
                continue
            seen.add(record.denoise_id)
            created = _epoch(record.created_at)
            if created is not None and created < wanted.since:
                reached_older = True
            verdict = _match(record, wanted)
            if verdict is _YES:
                found.append(record)
            elif verdict is _MAYBE:
                maybe.append(record)
        if reached_older:
            return found, maybe
        offset += len(records)
    raise ProtocolError(
        "more than %d jobs were created since the upload began: too many to look through"
        % (_LOOKUP_PAGES * _LOOKUP_RECORDS)
    )


_ISO_TIME = _Regex(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?$", re.ASCII
)


def _epoch(text: Optional[str]) -> Optional[float]:
    """Seconds since the epoch of an ISO 8601 time (UTC if no zone)."""
    import calendar

    match = _ISO_TIME.match(text or "")
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    try:
        seconds = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None
    seconds += float(match.group(7) or 0)
    zone = match.group(8)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "+" else 1
        digits = zone[1:].replace(":", "")
        seconds += sign * (int(digits[:2]) * 3600 + int(digits[2:] or 0) * 60)
    return seconds


def _list(client: _Call, limit: Optional[int], offset: int) -> Tuple[List[JobRecord], float]:
    """One GET /denoise: the records, and the server's clock minus ours
    (from its Date header; 0 if it sent none)."""
    query = "offset=%d" % offset + ("&limit=%d" % limit if limit is not None else "")
    headers = {
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",
        "User-Agent": _USER_AGENT,
    }  # type: Dict[str, Union[str, bytes]]
    response = client.send("GET", client.url("/denoise?" + query), headers)
    if response.status_code != 200:
        raise client.error(response, for_job=False)
    skew = 0.0
    date = response.headers.get("Date")
    if date:
        try:
            skew = parsedate_to_datetime(date).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError, AttributeError):
            skew = 0.0
    payload = client.read_json(response, _LIST_LIMIT_BYTES, "the job list")
    if not isinstance(payload, list):
        raise ProtocolError("the job list is not a JSON list: %s" % _clean(json.dumps(payload)))
    return [_job_record(item) for item in payload], skew


def _job_record(item: Any) -> JobRecord:
    job = item.get("id") if isinstance(item, dict) else None
    canonical = _canonical_uuid(job) if isinstance(job, str) else None
    status = item.get("status") if isinstance(item, dict) else None
    if canonical is None or not isinstance(status, str):
        raise ProtocolError(
            "a job record has no valid id and status: %s" % _clean(json.dumps(item))
        )

    def text(name: str) -> Optional[str]:
        value = item.get(name)
        return value if isinstance(value, str) else None

    def number(name: str) -> Optional[float]:
        value = item.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, int):  # JSON integers have no size limit
            return value if abs(value) <= 2**53 else None
        return value if math.isfinite(value) else None

    size = number("audio_size")
    return JobRecord(
        canonical,
        status,
        audio_url=text("audio_url"),
        file_name=text("file_name"),
        audio_size=int(size) if size is not None and size == int(size) else None,
        audio_duration=number("audio_duration"),
        source_type=text("source_type"),
        error=text("error"),
        created_at=text("created_at"),
        updated_at=text("updated_at"),
    )


# --------------------------------------------------------------------------
# Progress display: one job's state, drawn on a terminal, a log or a notebook.
# --------------------------------------------------------------------------


# How a job's display ended: the outcome as data.  A batch's totals count
# these kinds; a message is never read back to learn what happened.
_DONE = "done"  # the job is done; nothing saved (yet)
_SAVED = "saved"
_ALREADY_SAVED = "already saved"  # by an earlier run: nothing sent or fetched
_FAILED = "failed"
_DEFERRED = "deferred"  # left for a later run: a cap, the deadline, a stop
_REFUSED = "refused"  # refused before it could be a job: a check, a 4xx
_ENDED = "ended"  # ended as it stood, or with a caller's line of text
_SUCCEEDED = frozenset((_DONE, _SAVED, _ALREADY_SAVED))
_UNSUCCESSFUL = frozenset((_FAILED, _DEFERRED, _REFUSED))


class _Outcome:
    """How a job ended, as a display shows it: its kind and its line."""

    __slots__ = ("kind", "text", "url")

    def __init__(self, kind: str, text: str, url: Optional[str] = None) -> None:
        self.kind = kind
        self.text = text
        self.url = url

    @classmethod
    def of(cls, outcome: Any, kind: Optional[str] = None) -> "_Outcome":
        """The outcome of a :class:`DoneEvent`, an exception, or a line of
        text; ``kind`` overrides the one an exception implies."""
        if isinstance(outcome, _Outcome):
            return outcome
        if isinstance(outcome, DoneEvent):
            url = _clean(outcome.url, None)
            return cls(_DONE, "done: %s" % url, url)
        if isinstance(outcome, DenoiseFailedError):
            return cls(kind or _FAILED, "failed: %s" % _clean(outcome.message, None))
        if isinstance(outcome, KeyboardInterrupt):
            return cls(kind or _DEFERRED, "stopped: interrupted")
        if isinstance(outcome, BaseException):
            text = _clean(str(outcome) or type(outcome).__name__, None)
            kind = kind or _kind_of(outcome)
            return cls(kind, "%s: %s" % ("refused" if kind == _REFUSED else "stopped", text))
        return cls(kind or _ENDED, _clean(str(outcome), None))


def _kind_of(error: BaseException) -> str:
    """The kind of outcome an exception means: what a later run does
    (deferred), what it cannot do either (refused), or a failure."""
    deferred = (NotSubmittedError, WaitTimeoutError, _Aborted, _StoppedWhileFollowed)
    if isinstance(error, deferred + (KeyboardInterrupt,)):
        return _DEFERRED
    if isinstance(error, (ConfigurationError, ProxyAuthenticationError, CertificateError)):
        return _REFUSED
    if isinstance(error, APIError) and not RetryPolicy._retryable(error):
        return _REFUSED
    return _FAILED


class _JobState:
    """What a display shows of one job, apart from how it is drawn: the
    phase (upload, processing, download), how far it is, and its outcome.
    Every text in it is already redacted and printable."""

    def __init__(self, label: Optional[str]) -> None:
        self.label = label
        self.started = time.monotonic()
        self.phase = None  # type: Optional[str]
        self.pct = None  # type: Optional[float]
        self.message = None  # type: Optional[str]
        self.sent = 0
        self.total = None  # type: Optional[int]
        self.url = None  # type: Optional[str]
        #: The outcome's kind (``_SAVED``, ``_FAILED``...) and line, once ended.
        self.kind = None  # type: Optional[str]
        self.outcome = None  # type: Optional[str]

    def fraction(self) -> Optional[float]:
        """How far the job is, 0 to 1, or None when unknown or when it
        ended without success (a bar full of a refused file would lie)."""
        if self.kind in _SUCCEEDED:
            return 1.0
        if self.kind in _UNSUCCESSFUL:
            return None
        if self.phase in ("upload", "download"):
            return min(self.sent / self.total, 1.0) if self.total else None
        return None if self.pct is None else min(max(self.pct, 0.0), 100.0) / 100.0

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


# Library messages name the Python parameter that changes a choice; the
# command line shows its own flag instead (_cli_text), so that neither
# audience reads the other's spelling.  Whole phrases, so that a file name
# in a message is never reworded.
_CLI_WORDS = (
    ("check=False sends it anyway", "--no-check sends it anyway"),
    ("reuse=False sends the file again", "--no-reuse sends the file again"),
    ("retry_failed=True sends the file again", "--retry-failed sends the file again"),
    ("(retry_failed=True)", "(--retry-failed)"),
    ("(allow_http=True allows it)", "(--allow-http allows it)"),
    ("this run's max_files cap", "this run's --max-files cap"),
    ("this run's max_bytes cap", "this run's --max-bytes cap"),
    (", or pass a session whose verify= names it", ""),
    (
        "pass lock= where callers may run together",
        "do not send the same file from two commands at once",
    ),
)


def _cli_text(text: str) -> str:
    """A library message as the command line shows it: with its flags, not
    the Python parameters."""
    for python, flag in _CLI_WORDS:
        if python in text:
            text = text.replace(python, flag)
    return text


def _as_is(text: str) -> str:
    return text


class _Observer:
    """What the pipeline tells whoever watches a job, in order: the upload,
    the job's id, its progress, its end on the server, the download, and
    how it all ended.  Each does nothing here.  Called with an event, it
    is an ``on_progress``."""

    def __call__(self, event: ProcessingEvent) -> None:
        self.progress(event)

    def uploading(self, sent: int, total: Optional[int]) -> None:
        """``sent`` of ``total`` bytes of the file are out."""

    def submitted(self, submission: Submission) -> None:
        """The file's job is known: sent now, or found (``adopted``)."""

    def progress(self, event: ProcessingEvent) -> None:
        """The job advanced on the server."""

    def done(self, done: DoneEvent) -> None:
        """The job is done on the server; its download follows."""

    def downloading(self, received: int, total: Optional[int]) -> None:
        """``received`` of ``total`` bytes of the result are in."""

    def ended(self, outcome: Any) -> None:
        """The end: a :class:`DoneEvent`, an exception, or an :class:`_Outcome`."""


class _Callback(_Observer):
    """A plain callable as an observer: ``on_progress(event)``, or a
    transfer's ``(done, total)`` for ``slot="uploading"``/``"downloading"``.
    The callable is set as the method itself: no extra call per event."""

    def __init__(self, function: Callable[..., Any], slot: str, finish: Any = None) -> None:
        setattr(self, slot, function)
        self._finish = finish

    def ended(self, outcome: Any) -> None:
        if self._finish is not None:
            self._finish(outcome.text if isinstance(outcome, _Outcome) else outcome)


class _Observers(_Observer):
    """Several observers told the same, in turn (a display and JSON lines)."""

    def __init__(self, *observers: _Observer) -> None:
        self._all = observers

    def uploading(self, sent: int, total: Optional[int]) -> None:
        for observer in self._all:
            observer.uploading(sent, total)

    def submitted(self, submission: Submission) -> None:
        for observer in self._all:
            observer.submitted(submission)

    def progress(self, event: ProcessingEvent) -> None:
        for observer in self._all:
            observer.progress(event)

    def done(self, done: DoneEvent) -> None:
        for observer in self._all:
            observer.done(done)

    def downloading(self, received: int, total: Optional[int]) -> None:
        for observer in self._all:
            observer.downloading(received, total)

    def ended(self, outcome: Any) -> None:
        for observer in self._all:
            observer.ended(outcome)


def _observer(on_progress: Any, slot: str = "progress") -> _Observer:
    """``on_progress`` as an observer, whatever it is: None, an observer, a
    :class:`ProgressBar` or one of its bound methods (its display), or a
    caller's callable or display object, told as ``slot`` says.  The one
    place that tells them apart."""
    if on_progress is None:
        return _Observer()
    if isinstance(on_progress, _Observer):
        return on_progress
    if type(on_progress) is ProgressBar:
        return on_progress._watch
    if isinstance(on_progress, types.MethodType) and type(on_progress.__self__) is ProgressBar:
        return on_progress.__self__._watch
    return _CallerDisplay(on_progress, slot)


def _ignore(*args: Any) -> None:
    """What a display that is not callable is called with: nothing."""


class _CallerDisplay(_Callback):
    """A caller's own callable or display, told as the public functions
    document it (and as 0.7 told it): called with each event; its
    ``upload`` and ``transfer`` methods, where it has them, with the upload
    and the download; its ``finish`` (or its owner's, for a bound method)
    with the end.  A :class:`ProgressBar` subclass is one too, so that the
    methods it overrides are called; its display still shows the job's id
    and its end on the server.  ``slot`` is what a bare callable is for:
    ``progress`` events, or a transfer's ``uploading``/``downloading``
    ``(done, total)``."""

    def __init__(self, target: Any, slot: str) -> None:
        owner = getattr(target, "__self__", target)
        finish = getattr(target, "finish", None)
        if not callable(finish):
            finish = getattr(owner, "finish", None)
        upload = getattr(owner if slot == "uploading" else target, "upload", None)
        transfer = getattr(target, "transfer", None)
        function = target if callable(target) else _ignore
        super().__init__(function, slot, finish if callable(finish) else None)
        if callable(upload) and slot in ("progress", "uploading"):
            self.uploading = upload  # type: ignore[method-assign]
        if callable(transfer) and slot in ("progress", "downloading"):
            self.downloading = transfer  # type: ignore[method-assign]
        if isinstance(owner, ProgressBar):
            self.submitted = owner._watch.submitted  # type: ignore[method-assign]
            self.done = owner._watch.done  # type: ignore[method-assign]


class _JsonLines(_Observer):
    """The command line's ``--json``: a JSON object per step, through
    ``record`` (stdout), with the file's name and its job when known."""

    def __init__(
        self,
        record: Callable[[Dict[str, Any]], Any],
        name: Optional[str] = None,
        job: Optional[str] = None,
        *,
        done: bool,
        error: bool,
    ) -> None:
        self._record = record
        self._name = name
        self._job = job
        #: Whether the done event and a failed job's error get a line here
        #: (the command line may print them as its result instead).
        self._done = done
        self._error = error

    def _emit(self, fields: Dict[str, Any], **more: Any) -> None:
        if self._name is not None:
            fields.update(file=self._name, denoiseId=self._job)
        fields.update(more)
        self._record(fields)

    def submitted(self, submission: Submission) -> None:
        self._job = submission.denoise_id
        self._emit({"stage": "submitted"}, **({"adopted": True} if submission.adopted else {}))

    def progress(self, event: ProcessingEvent) -> None:
        self._emit(event.to_dict())

    def done(self, done: DoneEvent) -> None:
        if self._done:
            self._emit(done.to_dict())

    def ended(self, outcome: Any) -> None:
        if self._error and isinstance(outcome, DenoiseFailedError):
            self._job = self._job or outcome.denoise_id
            self._emit(ErrorEvent(outcome.message).to_dict())


class _Watch(_Observer):
    """An observer that keeps one job's state and has a display draw it."""

    def __init__(self, display: Callable[[], "_Display"], label: Optional[str]) -> None:
        self._display = display
        self.state = _JobState(label)
        self._finished = False
        self._raw = None  # type: Optional[str]  # the message as sent, of state.message
        #: Whether an error ends the display with its message; the command
        #: line ends it as it stands, and its error line says the rest.
        self.shows_errors = True

    def uploading(self, sent: int, total: Optional[int]) -> None:
        if self._finished:
            self._new_job()  # a reused display: the next job
        self._transfer("upload", sent, total)

    def submitted(self, submission: Submission) -> None:
        text = "submitted as job %s" % submission.denoise_id
        if submission.adopted:
            text = "found its job %s (sent earlier): not sent again" % submission.denoise_id
        self._display().line(self.state, text)

    def progress(self, event: ProcessingEvent) -> None:
        if self._finished:
            self._new_job()
        state = self._move_to("processing")
        message = state.message
        if event.message != self._raw:  # cleaned once, not at each event
            self._raw = event.message
            message = _clean(event.message, None) if event.message else None
        changed = message != state.message or state.pct is None
        state.pct = float(event.pct)
        state.message = message
        self._display().changed(state, changed or state.pct >= 100)

    def done(self, done: DoneEvent) -> None:
        state = self._move_to("processing")
        state.url = _clean(done.url, None)
        state.pct = 100.0
        self._display().milestone(state, "done: %s" % state.url)

    def downloading(self, received: int, total: Optional[int]) -> None:
        self._transfer("download", received, total)

    def ended(self, outcome: Any) -> None:
        if self._finished:
            return
        self._finished = True
        if isinstance(outcome, BaseException) and not self.shows_errors:
            outcome = None
        state = self._state_at_end(outcome)
        if state.phase is not None or state.outcome is not None:
            self._display().end(state)

    def note(self, text: str) -> None:
        display = self._display()
        display.line(self.state, _clean(display.wording(text), None))

    def _state_at_end(self, outcome: Any) -> _JobState:
        state = self.state
        if outcome is not None and outcome != "":
            end = _Outcome.of(outcome)
            state.kind, state.outcome = end.kind, self._display().wording(end.text)
            if end.url is not None:
                state.url = end.url
                state.pct = 100.0
        elif state.phase in ("upload", "download") and state.total and state.sent == state.total:
            state.kind = _ENDED
            state.outcome = "%s %s" % (
                "uploaded" if state.phase == "upload" else "downloaded",
                _size(state.sent),
            )
        else:
            state.kind = _ENDED
        return state

    def _transfer(self, phase: str, done: int, total: Optional[int]) -> None:
        changed = self.state.phase != phase
        state = self._move_to(phase)
        state.sent = done
        state.total = total if total else None
        self._display().changed(state, changed or done == total)

    def _move_to(self, phase: str) -> _JobState:
        """The state, moved to ``phase``: an ended display goes on when the
        same job enters a later phase (a download after ``done``)."""
        state = self.state
        if self._finished:
            self._finished = False
            state.kind = state.outcome = None
        state.phase = phase
        return state

    def _new_job(self) -> None:
        self.state = _JobState(self.state.label)
        self._finished = False
        self._raw = None


class ProgressBar:
    """A ready-made progress display for terminals, logs and notebooks.

    ::

        done = wait(denoise_id, on_progress=ProgressBar())

    It shows a job's whole life as one display: the upload (``upload``,
    or ``transfer`` given as ``submit``'s ``on_upload``), the job's id on a
    line of its own once it is known, the processing events (call it with
    each :class:`ProcessingEvent`), the download (``transfer``), then the
    outcome.

    - On a terminal: one line updated in place (bar, percent, message,
      elapsed time), ended with a newline when the job ends.  The bar
      shrinks on a narrow terminal, so that the message keeps some room.
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
        self._shown_on = None  # type: Optional[_Display]
        self._watch = _Watch(self._display, None if label is None else _clean(str(label), None))
        # How an error's text is worded: the command line's bar shows its
        # flags instead of Python's parameters (_cli_text).
        self._wording = _as_is  # type: Callable[[str], str]

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
        self._watch.progress(event)

    def upload(self, sent: int, total: Optional[int]) -> None:
        """Show an upload's progress: ``sent`` of ``total`` bytes."""
        self._watch.uploading(sent, total)

    def transfer(self, received: int, total: Optional[int]) -> None:
        """Show a download's progress: ``received`` of ``total`` bytes."""
        self._watch.downloading(received, total)

    def finish(self, outcome: Union[DoneEvent, BaseException, str, None] = None) -> None:
        """End the display with the outcome: a :class:`DoneEvent`, an
        exception, a line of text (``"saved clean.wav"``), or ``None`` to
        end it as it stands."""
        self._watch.ended(outcome)

    def note(self, text: str) -> None:
        """Show a line of text (a warning, say) without garbling the display."""
        self._watch.note(text)

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.finish(exc)

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _display(self, total: Optional[int] = None) -> "_Display":
        """This bar's display; a batch (``total`` files) gets a new one,
        which the bar's notes share until the batch is over."""
        shown = self._shown_on
        if total is not None or shown is None or shown.closed:
            shown = self._shown_on = _Display(_renderer(self.mode, self._out), total)
            shown.wording = self._wording
        return shown


class _Display:
    """The states of the jobs shown on one stream, drawn by one renderer,
    and for a batch (``total`` files) the totals of their outcomes.  Each
    change comes here from a :class:`_Watch`, from any thread."""

    def __init__(self, renderer: "_Renderer", total: Optional[int] = None) -> None:
        self.renderer = renderer
        self.total = total
        self.live = []  # type: List[_JobState]
        self.ended = []  # type: List[_JobState]
        self.counts = dict.fromkeys(
            (_DONE, _SAVED, _ALREADY_SAVED, _FAILED, _DEFERRED, _REFUSED, _ENDED), 0
        )
        self.started = time.monotonic()
        self.closed = False
        self._lock = threading.RLock()
        self._last = 0.0
        #: How the outcomes and notes shown here are worded (_cli_text for
        #: the command line's).
        self.wording = _as_is  # type: Callable[[str], str]

    def watch(self, label: Optional[str]) -> _Watch:
        """An observer of one more job, drawn here."""
        return _Watch(lambda: self, label)

    def changed(self, state: _JobState, important: bool) -> None:
        with self._lock:
            if state not in self.live:
                important = self._enter(state)
            if self.renderer.throttled and not important:
                # At most ten redraws a second: a fast stream must not
                # spend its time drawing.
                now = time.monotonic()
                if now - self._last < 0.1:
                    return
                self._last = now
            self.renderer.draw(self, state)

    def milestone(self, state: _JobState, text: str) -> None:
        with self._lock:
            self._enter(state)
            self.renderer.milestone(self, state, text)

    def _enter(self, state: _JobState) -> bool:
        """Show ``state`` among the jobs in flight; whether it was not."""
        if state in self.live:
            return False
        self.live.append(state)
        if state in self.ended:
            self.ended.remove(state)  # the same job goes on (its download)
        return True

    def line(self, state: Optional[_JobState], text: str) -> None:
        with self._lock:
            self.renderer.line(self, state, text)

    def end(self, state: _JobState) -> None:
        with self._lock:
            if state in self.live:
                self.live.remove(state)
            self.ended = [other for other in self.ended[-49:] if other is not state] + [state]
            self.counts[state.kind or _ENDED] += 1
            self.renderer.ended(self, state)

    def close(self) -> None:
        with self._lock:
            self.live = []
            self.closed = True
            self.renderer.close(self)

    def rows(self) -> List[_JobState]:
        """What an in-place display shows: the jobs in flight, and the
        ended ones of a batch (of a single job, its last state)."""
        if self.total is not None:
            return self.live + self.ended
        return self.live or self.ended[-1:]

    def totals(self) -> Optional[str]:
        """A batch's totals line; None for a single job."""
        if self.total is None:
            return None
        counts = self.counts
        done = counts[_DONE] + counts[_SAVED] + counts[_ALREADY_SAVED]
        failed = counts[_FAILED] + counts[_ENDED]
        parts = ["%d done" % done, "%d failed" % failed]
        # Deferred and refused files are not failures: a rerun finishes the
        # first, and the second needs the user's hand, not a rerun.
        for kind in (_DEFERRED, _REFUSED):
            if counts[kind]:
                parts.append("%d %s" % (counts[kind], kind))
        left = self.total - sum(counts.values())
        elapsed = "%d:%02d" % divmod(int(time.monotonic() - self.started), 60)
        return "%s, %d left  %s" % (", ".join(parts), left, elapsed)


def _renderer(mode: str, out: Callable[[], TextIO]) -> "_Renderer":
    if mode == "terminal":
        return _TerminalRenderer(out)
    if mode == "notebook":
        try:
            display = importlib.import_module("IPython.display").display
        except ImportError:  # mode="notebook" forced outside IPython
            return _LogRenderer(out)
        return _NotebookRenderer(out, display)
    return _LogRenderer(out)


class _Renderer:
    """How a display is drawn on one stream; the base writes safely.  Its
    methods are called under the display's lock."""

    #: Whether in-place redraws are limited to ten a second.
    throttled = True

    def __init__(self, out: Callable[[], TextIO]) -> None:
        self._out = out
        self._dead = False

    def draw(self, display: _Display, state: _JobState) -> None:
        """``state`` changed."""
        raise NotImplementedError

    def milestone(self, display: _Display, state: _JobState, text: str) -> None:
        """A step worth its own line in a log (the job done, before its
        download); elsewhere the display just moves on."""
        self.draw(display, state)

    def line(self, display: _Display, state: Optional[_JobState], text: str) -> None:
        """A line of its own: a note, a job's id."""
        raise NotImplementedError

    def ended(self, display: _Display, state: _JobState) -> None:
        raise NotImplementedError

    def close(self, display: _Display) -> None:
        """The batch is over."""

    def unicode_ok(self) -> bool:
        encoding = getattr(self._out(), "encoding", None) or ""
        return encoding.lower().replace("-", "").startswith("utf")

    def bar(self, state: _JobState, width: int = 24) -> str:
        fraction = state.fraction()
        if fraction is None or width < 4:
            return ""
        filled = int(round(width * fraction))
        full, empty = ("\u2588", "\u2591") if self.unicode_ok() else ("#", "-")
        return "[%s%s]" % (full * filled, empty * (width - filled))

    def write(self, text: str) -> None:
        """Write and flush; a stream that fails ends the display, not the job."""
        if self._dead:
            return
        out = self._out()
        if out is None:  # no stderr at all (pythonw, 2>&-)
            self._dead = True
            return
        try:
            out.write(_encodable(out, text))
            flush = getattr(out, "flush", None)
            if flush is not None:
                flush()
        except (OSError, ValueError):  # a closed pipe or file
            self._dead = True


class _TerminalRenderer(_Renderer):
    """The jobs in flight, a line each, and the totals under them, redrawn
    in place; an ended job's line and the notes stay above.  One line (a
    single job) is redrawn with a carriage return and blanked with spaces,
    which every console shows right; a block needs ANSI cursor moves."""

    _MAX_ROWS = 20

    def __init__(self, out: Callable[[], TextIO]) -> None:
        super().__init__(out)
        self._drawn = 0  # lines of the block now on screen
        self._width = 0  # terminal columns of its last line

    def draw(self, display: _Display, state: _JobState) -> None:
        self._redraw(display, [])

    def line(self, display: _Display, state: Optional[_JobState], text: str) -> None:
        # Never cut: it may be the job's id, the line a user needs.
        label = state.label + "  " if state is not None and state.label else ""
        self._redraw(display, [_encodable(self._out(), label + text)])

    def ended(self, display: _Display, state: _JobState) -> None:
        if (
            state.outcome is None
            and self._drawn == 1
            and not display.live
            and display.total is None
        ):
            # Ended as it stands: its line is on screen already.
            self.write("\n")
            self._drawn = self._width = 0
            return
        self._redraw(display, [self._row(state, self._columns())[0]])

    def close(self, display: _Display) -> None:
        self._redraw(display, [])
        if self._drawn:
            self.write("\n")
        self._drawn = self._width = 0

    def _row(self, state: _JobState, columns: int) -> Tuple[str, int]:
        """One job's line, fit to the terminal, and the columns it takes."""
        text = state.text()
        if state.kind == _DONE:
            text = "100%  done"  # the URL follows on stdout, not in the bar
        label = state.label + "  " if state.label else ""
        tail = "  " + state.elapsed()
        room = columns - 1 - len(tail)
        # The bar gives way first: a narrow terminal keeps the message.
        bar = self.bar(state, min(24, room - _fit(label, room)[1] - 22))
        line = _encodable(self._out(), label + (bar + " " if bar else "") + text)
        # The message is what gets cut, not the elapsed time after it.
        line, width = _fit(line, room)
        return line + tail, width + len(tail)

    def _redraw(self, display: _Display, above: List[str]) -> None:
        columns = self._columns()
        rows = [self._row(state, columns) for state in display.live[: self._MAX_ROWS]]
        if len(display.live) > self._MAX_ROWS:
            more = "... and %d more in flight" % (len(display.live) - self._MAX_ROWS)
            rows.append(_fit(more, columns - 1))
        totals = display.totals()
        if totals is not None and (rows or sum(display.counts.values())):
            rows.append(_fit(totals, columns - 1))
        if self._drawn > 1 or len(rows) > 1:
            # Up to the block's first line, clear to the end of the screen,
            # and write it again: rows never wrap, so the count is exact.
            text = "\r" + ("\x1b[%dA" % (self._drawn - 1) if self._drawn > 1 else "") + "\x1b[J"
            text += "".join(line + "\n" for line in above)
            text += "\n".join(row for row, _ in rows)
        else:
            text = "\r"
            for line in above:
                text += line + " " * max(self._width - _fit(line, columns)[1], 0) + "\n"
                self._width = 0
            if rows:
                text += rows[0][0] + " " * max(self._width - rows[0][1], 0)
        self._drawn = len(rows)
        self._width = rows[-1][1] if rows else 0
        self.write(text)

    def _columns(self) -> int:
        # The stream's own terminal: stdout may well be a pipe ($(...)).
        try:
            columns = os.get_terminal_size(self._out().fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a real terminal
            columns = 0
        # 0 is what a terminal that never set its size reports.
        return columns or shutil.get_terminal_size((80, 24)).columns


class _LogRenderer(_Renderer):
    """Timestamped lines, no carriage returns, prefixed with the job's
    label: one per new phase, message or 10-percent step (10 MB when a
    transfer's size is unknown), one for each job's id and outcome, and in
    a batch the totals after each outcome."""

    throttled = False  # it writes news only

    def __init__(self, out: Callable[[], TextIO]) -> None:
        super().__init__(out)
        self._logged = {}  # type: Dict[int, Tuple[Optional[str], int, Optional[str]]]

    def draw(self, display: _Display, state: _JobState) -> None:
        if state.phase in ("upload", "download"):
            if state.total:
                step = int(100 * state.sent / state.total) // 10
            else:
                step = state.sent // (10 * 1000 * 1000)
            message = None
        else:
            step = int((state.pct or 0) // 10)
            message = state.message
        phase, last_step, last_message = self._logged.get(id(state), (None, -1, None))
        if phase != state.phase:
            last_step, last_message = -1, None
        if step > last_step or (message and message != last_message):
            self._logged[id(state)] = (state.phase, max(step, last_step), message)
            self.line(display, state, state.text())

    def milestone(self, display: _Display, state: _JobState, text: str) -> None:
        self.line(display, state, text)

    def ended(self, display: _Display, state: _JobState) -> None:
        self._logged.pop(id(state), None)
        if state.outcome:
            self.line(display, state, state.outcome)
        totals = display.totals()
        if totals is not None:
            self.line(display, None, totals)

    def line(self, display: _Display, state: Optional[_JobState], text: str) -> None:
        label = state.label + ": " if state is not None and state.label else ""
        self.write("%s munsit: %s%s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), label, text))


class _NotebookRenderer(_Renderer):
    """One IPython display, updated in place: a row per job (a note shown
    in its row until the job moves on), and a batch's totals."""

    def __init__(self, out: Callable[[], TextIO], display: Callable[..., Any]) -> None:
        super().__init__(out)
        self._display = display
        self._handle = None  # type: Any
        self._notes = {}  # type: Dict[int, str]

    def draw(self, display: _Display, state: _JobState) -> None:
        self._notes.pop(id(state), None)
        self._show(display)

    def line(self, display: _Display, state: Optional[_JobState], text: str) -> None:
        if state is not None:
            self._notes[id(state)] = text
        self._show(display)

    def ended(self, display: _Display, state: _JobState) -> None:
        self.draw(display, state)

    def close(self, display: _Display) -> None:
        self._show(display)

    def _show(self, display: _Display) -> None:
        import html

        rows, plain = [], []
        for state in display.rows():
            text = self._notes.get(id(state), state.text())
            body = html.escape(text)
            url = state.url
            # A link only to a plain http(s) URL: never javascript: or data:.
            if url and state.outcome is not None and _is_web_url(url):
                link = '<a href="%s" target="_blank" rel="noopener">%s</a>' % (
                    html.escape(url, quote=True),
                    html.escape(url),
                )
                body = "done: " + link if state.kind == _DONE else body + " (%s)" % link
            fraction = state.fraction()
            progress = (
                ""
                if fraction is None
                else '<progress value="%.1f" max="100" style="width: 16em; vertical-align: '
                'middle"></progress>' % (100.0 * fraction)
            )
            rows.append(
                '<tr><td dir="auto"><b>%s</b></td><td>%s</td><td dir="auto">%s</td>'
                '<td style="color: gray">%s</td></tr>'
                % (html.escape(state.label or ""), progress, body, html.escape(state.elapsed()))
            )
            parts = (state.label, self.bar(state), text, state.elapsed())
            plain.append(" ".join(part for part in parts if part))
        totals = display.totals()
        markup = '<div style="font-family: monospace"><table>%s</table>%s</div>' % (
            "".join(rows),
            "" if totals is None else "<div>%s</div>" % html.escape(totals),
        )
        if totals is not None:
            plain.append(totals)
        bundle = {"text/plain": "\n".join(plain), "text/html": markup}
        if self._handle is None:
            self._handle = self._display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


def _encodable(stream: Any, text: str) -> str:
    """``text`` with what ``stream`` cannot encode replaced by ``?``."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf16", "utf32"):
        return text
    try:
        return text.encode(encoding, "replace").decode(encoding, "replace")
    except LookupError:  # an encoding Python does not know
        return text.encode("ascii", "replace").decode("ascii")


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


def _output_path(path: "Union[str, os.PathLike[str]]") -> str:
    """The regular file that saving to ``path`` replaces: ``path`` itself,
    or the file a symlink there points to.  ConfigurationError for anything
    that must not be replaced, found before any request is sent."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigurationError("the output must be a file name, got %r" % (path,))
    name = os.fspath(path)
    path = name if isinstance(name, str) else os.fsdecode(name)
    shown = _printable(path)
    if path.endswith(("/", os.sep)):
        raise ConfigurationError("cannot write %s: it names a folder" % shown)
    try:
        # os.stat follows symlinks: a link to /dev/null or /proc/self/fd/1 is
        # judged by what it points to.
        mode = os.stat(path).st_mode  # type: Optional[int]
        os.fsencode(path)  # a lone surrogate or NUL fails here, not halfway
    except FileNotFoundError:
        mode = None
    except (OSError, ValueError) as exc:  # ValueError: NUL, unencodable names
        reason = getattr(exc, "strerror", None) or "not a usable file name"
        raise ConfigurationError("cannot write %s: %s" % (shown, reason)) from None
    if mode is not None and not _stat.S_ISREG(mode):
        kind = "a folder" if _stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigurationError("cannot write %s: it is %s" % (shown, kind))
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    if not os.path.isdir(folder):
        raise ConfigurationError("cannot write %s: no folder %s" % (shown, _printable(folder)))
    if not os.access(folder, os.W_OK):
        raise ConfigurationError("cannot write %s: the folder is not writable" % shown)
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, ValueError, OSError):  # no pathconf (Windows)
        name_max = 255
    if len(os.fsencode(os.path.basename(real))) > name_max:
        raise ConfigurationError(
            "cannot write %s: the name is longer than %d bytes" % (shown, name_max)
        )
    return real


# A download's temporary file: .NAME.XXXXXXXX.part beside its target.
_TEMPORARY = _Regex(r"\..+\.[0-9a-f]{8}\.part", re.DOTALL)
_TEMPORARY_END = _Regex(r"\.[0-9a-f]{8}\.part")


def _sweep_temporaries(folder: str, prefix: str = ".") -> None:
    """Remove what killed runs left: the temporary files of unfinished
    downloads (.NAME.XXXXXXXX.part), those starting with ``prefix``.  One
    that is locked belongs to a live download (another process saving into
    this folder) and stays."""
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or not _TEMPORARY.fullmatch(name):
            continue
        if prefix != "." and not _TEMPORARY_END.fullmatch(name[len(prefix) :]):
            continue  # another target's
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            # Read-only: a temporary copies its target's mode, which may be 0444.
            flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
            try:
                if _lock_descriptor(fd):
                    os.unlink(path)
            finally:
                os.close(fd)


def _temporary_beside(target: str, sweep: bool = True) -> Tuple[str, int]:
    """Create an empty file next to ``target`` for its new content, with
    the permission bits of the file it will replace; (its path, its fd).
    ``sweep=False`` when the folder was swept already (a batch's)."""
    folder, name = os.path.split(target)
    # A short stem, so that the name stays legal whatever the target's length.
    stem = name.encode("utf-8", "surrogateescape")[:96].decode("utf-8", "ignore")
    if sweep:
        # What killed saves of this target left.  It lists the folder: a
        # batch, whose folder holds every night's results, sweeps it once.
        _sweep_temporaries(folder, "." + stem)
    for _ in range(8):
        temporary = os.path.join(folder, ".%s.%s.part" % (stem, os.urandom(4).hex()))
        try:
            fd = os.open(
                temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
            )
        except OSError as exc:
            raise OSError(exc.errno, "cannot write %s: %s" % (target, exc.strerror)) from exc
        # Locked while it is written, so that a batch sweeping the folder
        # removes only the temporaries of dead runs; a sweep may have taken
        # it in the moment before the lock, so it must still be there.
        if _lock_descriptor(fd) and os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)
    else:
        raise OSError(errno.EAGAIN, "cannot write %s: no temporary file could be made" % target)
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
    client: _Call,
    url: str,
    target: str,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    policy: RetryPolicy,
    sweep: bool = True,
) -> None:
    """Fetch ``url`` into ``target``, whole or not at all.  SaveError for
    what the file system refused."""
    try:
        temporary, fd = _temporary_beside(target, sweep)
        try:
            with os.fdopen(fd, "r+b") as out:
                _fetch(client, url, out, report, max_size, policy)
                out.flush()
                os.fsync(out.fileno())
                if os.name == "posix":
                    # Renamed while still open, so still locked: a sweep
                    # never sees it unlocked.  (Windows renames only closed files.)
                    _replace(temporary, target)
            if os.name != "posix":
                _replace(temporary, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    except OSError as exc:
        if isinstance(exc, MunsitError):
            raise
        raise SaveError(
            exc.errno,
            "cannot save %s: %s" % (_printable(target), exc.strerror or _reason(exc)),
        ) from exc


_CONTENT_RANGE = _Regex(r"bytes (\d{1,18})-(\d{1,18})/(\d{1,18}|\*)", re.ASCII)


class _DownloadState:
    """What is known of the result being downloaded, across attempts."""

    __slots__ = ("received", "furthest", "total", "validator")

    def __init__(self) -> None:
        self.received = 0
        self.furthest = 0
        self.total = None  # type: Optional[int]
        self.validator = None  # type: Optional[str]


def _fetch(
    client: _Call,
    url: str,
    out: Any,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    policy: RetryPolicy,
) -> None:
    """Fetch ``url`` into ``out``, resuming across dropped connections."""
    body = _DownloadState()
    failures = 0
    while True:
        furthest = body.furthest
        try:
            if _fetch_once(client, url, out, report, max_size, body):
                return
            continue  # the server cannot resume: start again from zero
        except (TransportError, APIError) as exc:
            # Only bytes past the furthest point reached count as progress:
            # a server that always drops at the same offset gives up in time.
            failures = policy._pause_after(
                exc,
                failures,
                client.deadline,
                advanced=body.furthest > furthest,
                doing="resuming the download at byte %d" % body.received
                if body.received
                else "trying the download again",
            )


def _fetch_once(
    client: _Call,
    url: str,
    out: Any,
    report: Optional[Callable[[int, Optional[int]], Any]],
    max_size: int,
    body: _DownloadState,
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
        if not _usable_answer(client, response, out, report, body, resuming):
            return False
        _check_result_headers(response, body, max_size)
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
        response.close()


def _usable_answer(
    client: _Call,
    response: _Exchange,
    out: Any,
    report: Optional[Callable[[int, Optional[int]], Any]],
    body: _DownloadState,
    resuming: bool,
) -> bool:
    """Whether the answer's body is to be read (its status and range fit
    what was asked); False when the file must start again from zero.
    Raises for an answer that is an error."""
    status = response.status_code
    if status == 206 and resuming:
        if not _continues(response, body):
            response.close()
            _restart(out, body, report)
            return False
    elif status == 200:
        if body.received:
            _restart(out, body, report)  # the server sent the whole file again
        body.total = _ascii_int(response.headers.get("Content-Length"))
        etag = response.headers.get("ETag", "")
        if etag and not etag.startswith("W/"):  # If-Range takes strong ETags only
            body.validator = etag
        else:
            body.validator = response.headers.get("Last-Modified") or None
    elif status == 416 and resuming:
        response.close()
        _restart(out, body, report)
        return False
    elif status == 206:
        # Part of the file, though all of it was asked for: usable only
        # if the part is the whole.
        body.received = 0
        match = None
        if _continues(response, body) and body.total is not None:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(2)) + 1 != body.total:
            raise ProtocolError("the server sent part of the result when all of it was asked for")
    else:
        raise client.error(response, for_job=False)
    return True


def _check_result_headers(response: _Exchange, body: _DownloadState, max_size: int) -> None:
    """Refuse, before a byte is written, a result that comes encoded or
    larger than ``max_size``."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(
            "the result came %s-encoded although it was asked for as sent" % _clean(encoding, 40)
        )
    if body.total is not None and body.total > max_size:
        raise ProtocolError(
            "the result is %d bytes, more than the %d allowed (max_size)" % (body.total, max_size)
        )


def _continues(response: _Exchange, body: _DownloadState) -> bool:
    """Whether a 206 answer is the rest of the same file: its range starts
    where the file stopped, and its total and validator are the first
    answer's (a server that ignores If-Range must not splice two versions)."""
    validator = body.validator
    if validator is not None:
        header = "ETag" if validator.startswith('"') else "Last-Modified"
        sent = response.headers.get(header)
        if sent is not None and sent != validator:
            return False
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


def _restart(
    out: Any, body: _DownloadState, report: Optional[Callable[[int, Optional[int]], Any]]
) -> None:
    out.seek(0)
    out.truncate()
    body.received = 0
    body.total = None
    body.validator = None
    if report is not None:
        report(0, None)


# --------------------------------------------------------------------------
# The one-file pipeline: submit (or adopt), follow, save
# --------------------------------------------------------------------------


def _shown_path(path: Any) -> str:
    name = os.fspath(path)
    return name if isinstance(name, str) else os.fsdecode(name)


def _denoise_one(
    client: _Call,
    source: _Source,
    target: Optional[Tuple[str, str]],
    observer: _Observer,
    policy: RetryPolicy,
    options: _JobOptions,
    hooks: _Hooks,
) -> DoneEvent:
    """One file's pipeline: submit (or adopt), follow, save.  The one way a
    file is uploaded, followed and saved; the batch and the command line
    add to it through ``hooks``.  ``target`` is where to save the result
    (the path to show, the file to write), if anywhere; ``observer`` is
    told each step."""
    job = hooks.known_id
    adopted = job is not None
    try:
        try:
            for attempt in range(2):
                if job is None:
                    submission = _submit(client, source, observer.uploading, policy, options, hooks)
                    job, adopted = submission.denoise_id, submission.adopted
                    hooks.submitted(submission)
                    observer.submitted(submission)
                try:
                    done = _follow_to_end(client, job, observer.progress, policy)
                    break
                except DenoiseFailedError:
                    if attempt or not adopted or not options.retry_failed:
                        raise
                    # A job found still running has failed since: send the
                    # file again, as asked, and never adopt that job again.
                    logger.info("job %s failed; sending the file again (retry_failed=True)", job)
                    hooks.excluded = hooks.excluded | {job}
                    job = None
            chosen = hooks.output_for(done)
            if chosen is not None:
                target = chosen
            if target is None:
                observer.ended(done)
                return done
            observer.done(done)
            try:
                _save(
                    client,
                    done.url,
                    target[1],
                    observer.downloading,
                    options.max_size,
                    policy,
                    sweep=not hooks.swept,
                )
            except APIError as exc:
                if adopted and job is not None and exc.status_code in (403, 404, 410):
                    raise hooks.result_gone(exc, job) from exc
                raise
        except MunsitError as exc:
            if job is not None:
                exc.denoise_id = job
            raise
        except OSError as exc:
            if job is None:
                raise
            # A caller's record of the job (a batch's journal) could not be
            # written: the job is taken and paid for, and must stay named.
            saving = SaveError(exc.errno, "cannot write: %s" % _printable(_reason(exc)))
            saving.denoise_id = job
            raise saving from exc
    except BaseException as exc:
        observer.ended(exc)
        raise
    observer.ended(_Outcome(_SAVED, _clean("saved %s" % target[0], None)))
    return done


def _result_gone(error: APIError, job: str) -> APIError:
    """An adopted job's result that cannot be fetched any more, said so."""
    gone = type(error)(
        error.status_code,
        error.error_code,
        "the result of job %s, found for this content, can no longer be downloaded (%s); "
        "reuse=False sends the file again as a new job"
        % (job, error.error_message or "HTTP %d" % error.status_code),
    )
    gone.denoise_id = job
    return gone


# --------------------------------------------------------------------------
# A folder of files: denoise_many()
# --------------------------------------------------------------------------

#: The batch journal's file name, in the output folder: an SQLite
#: database (0.4's JSON-lines journal, :data:`_OLD_JOURNAL_NAME`, is
#: imported into it once, then renamed with ``.imported`` added).
JOURNAL_NAME = ".munsit-batch.sqlite"
_OLD_JOURNAL_NAME = ".munsit-batch.jsonl"
#: The file held under the OS's lock by the run using the folder.
_LOCK_NAME = ".munsit-batch.lock"
_JOURNAL_VERSION = 2

# A content's key (64 hex digits and a size) is stored once, in contents;
# the other tables name it by its row number, which keeps a year's
# history, and its indexes, a fraction of the size.
# Every table is looked up by an index: a run reads what its own inputs
# need, never the whole history, so its start-up does not grow with it.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS contents (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL, event TEXT NOT NULL, content INTEGER NOT NULL,
    file TEXT, denoise_id TEXT, output TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS events_by_content ON events (content, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
CREATE TABLE IF NOT EXISTS outputs (
    folded TEXT PRIMARY KEY, name TEXT NOT NULL, stem TEXT NOT NULL,
    content INTEGER NOT NULL, denoise_id TEXT, at REAL);
CREATE INDEX IF NOT EXISTS outputs_by_stem ON outputs (stem);
CREATE INDEX IF NOT EXISTS outputs_by_content ON outputs (content);
CREATE TABLE IF NOT EXISTS inputs (
    path TEXT PRIMARY KEY, stat TEXT NOT NULL, content INTEGER NOT NULL);
"""

#: A saved output: its path (or name), and the job whose result it holds.
_SavedOutput = Tuple[str, Optional[str]]
_NamedOutput = Tuple[str, Optional[str]]

# A content's row number, from its key, in a query.
_CONTENT_ID = "(SELECT id FROM contents WHERE key = ?)"

# A file modified this close to when it was hashed may change again within
# its mtime's granularity (FAT: 2 s) without its stat changing: git calls
# such entries "racily clean".  Those are hashed again next time.
_RACY_NS = 3 * 10**9


@dataclass(frozen=True)
class FileResult:
    """How one input of :func:`denoise_many` ended.

    ``output`` is the saved file (``None`` unless saved); ``denoise_id`` the
    job (``None`` if it was never submitted); ``error`` is ``None`` on
    success, else the :class:`MunsitError` or ``OSError`` that ended it;
    ``skipped`` is true when the output was already there from an earlier
    run, so nothing was sent or fetched.
    """

    path: str
    output: Optional[str] = None
    denoise_id: Optional[str] = None
    error: Optional[BaseException] = None
    skipped: bool = False


def _file_stat(status: os.stat_result) -> str:
    """What says a file is unchanged without reading it, as git's index
    does: size, modification time in nanoseconds, inode and device."""
    return "%d:%d:%d:%d" % (status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev)


def _content_of(key: str) -> "Optional[_Content]":
    """The _Content a journal key (``sha256:size``) names, if it is one."""
    digest, _, size = key.partition(":")
    if len(digest) != 64 or not size.isdigit():
        return None
    return _Content(digest, int(size))


class _JournalView:
    """What a batch journal says, looked up by content: each input's state,
    which content each saved output holds, and which content a file had
    when it was last hashed."""

    def __init__(self, folder: str, database: Any) -> None:
        self.folder = folder
        self._db = database
        self._lock = threading.Lock()

    def _rows(self, query: str, *parameters: Any) -> List[Tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(query, parameters))

    def state(self, key: str) -> "Optional[_JournalEntry]":
        """What the journal says of this content, or None if nothing."""
        rows = self._rows(
            "SELECT event, at, file, denoise_id, output, error FROM events "
            "WHERE content = %s ORDER BY id" % _CONTENT_ID,
            key,
        )
        if not rows:
            return None
        state = _JournalEntry()
        for event, at, name, job, output, error in rows:
            record = {"event": event, "at": at, "file": name, "denoiseId": job}
            record.update(output=output, error=error)
            state.learn({field: value for field, value in record.items() if value is not None})
        return state

    def known_inputs(self, reals: List[str]) -> "Dict[str, Tuple[str, str, List[_NamedOutput]]]":
        """What the journal noted of these files (real paths): for each it
        knows, the stat it had, its content's key and that content's saved
        outputs (name, job).  Looked up in chunks, not one query a file."""
        known = {}  # type: Dict[str, Tuple[str, str, List[_NamedOutput]]]
        for start in range(0, len(reals), 500):  # SQLite's old limit: 999 parameters
            chunk = reals[start : start + 500]
            rows = self._rows(
                "SELECT path, stat, key, name, outputs.denoise_id FROM inputs "
                "JOIN contents ON contents.id = inputs.content "
                "LEFT JOIN outputs ON outputs.content = inputs.content "
                "WHERE path IN (%s)" % ",".join("?" * len(chunk)),
                *chunk,
            )
            for path, stat, key, name, job in rows:
                noted = known.setdefault(path, (stat, key, []))
                if name is not None:
                    noted[2].append((name, job))
        return known

    def known_content(self, real: str, status: os.stat_result) -> "Optional[_Content]":
        """The content ``real`` had when last hashed, if its stat is the same."""
        rows = self._rows(
            "SELECT key FROM inputs JOIN contents ON contents.id = inputs.content "
            "WHERE path = ? AND stat = ?",
            real,
            _file_stat(status),
        )
        return _content_of(rows[0][0]) if rows else None

    def remember(self, real: str, status: os.stat_result, content: "_Content") -> None:
        """Note a file's content by its stat (a reader notes nothing)."""

    def saved_output(self, key: str, stem: str) -> "Optional[_SavedOutput]":
        """The output saved from this content for an input of this stem, and
        its job, if it is still there and no other content's result
        replaced it."""
        rows = self._rows(
            "SELECT name, denoise_id FROM outputs WHERE content = %s AND stem = ? ORDER BY name"
            % _CONTENT_ID,
            key,
            stem.casefold(),
        )
        for name, job in rows:
            path = os.path.join(self.folder, name)
            if os.path.splitext(name)[0] == stem and os.path.isfile(path):
                return path, job
        return None

    def taken_output(self, key: str, stem: str) -> Optional[str]:
        """An output of this stem, any extension, that holds another
        content's result and is still there."""
        rows = self._rows(
            "SELECT name FROM outputs WHERE stem = ? AND content IS NOT %s ORDER BY name"
            % _CONTENT_ID,
            stem.casefold(),
            key,
        )
        for (name,) in rows:
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                return path
        return None

    def jobs_of_others(self, key: str, since: float) -> FrozenSet[str]:
        """Every job the journal gives to another content since ``since``
        (time.time()): older ones are outside any lookup's horizon."""
        rows = self._rows(
            "SELECT DISTINCT denoise_id FROM events "
            "WHERE at >= ? AND content IS NOT %s AND denoise_id IS NOT NULL" % _CONTENT_ID,
            since,
            key,
        )
        return frozenset(job for (job,) in rows)

    def records(self) -> Iterator[Dict[str, Any]]:
        """Every step, oldest first, as 0.4's journal lines said it."""
        cursor = self._db.execute(
            "SELECT at, event, key, file, denoise_id, output, error FROM events "
            "JOIN contents ON contents.id = events.content ORDER BY events.id"
        )
        for at, event, key, name, job, output, error in cursor:
            digest, _, size = key.partition(":")
            record = {"event": event, "sha256": digest, "at": at}  # type: Dict[str, Any]
            record["size"] = int(size) if size.isdigit() else size
            for field, value in (("file", name), ("denoiseId", job), ("output", output)):
                if value is not None:
                    record[field] = value
            if error is not None:
                record["error"] = error
            yield record

    def standing(self) -> Dict[str, int]:
        """How many contents last did each step (saved, failed, ...)."""
        rows = self._rows(
            "SELECT event, count(*) FROM events WHERE id IN "
            "(SELECT max(id) FROM events GROUP BY content) GROUP BY event"
        )
        return {event: count for event, count in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @classmethod
    def reading(cls, folder: str) -> "_JournalView":
        """The folder's journal, read without its lock and without writing
        (another run may be using it); an empty one if there is none."""
        import sqlite3

        path = os.path.join(folder, JOURNAL_NAME)
        old = os.path.join(folder, _OLD_JOURNAL_NAME)
        if os.path.isfile(path):
            # With no -wal beside it the file is whole and nobody writes it:
            # read as immutable, so that no -shm/-wal is left behind.
            whole = not os.path.exists(path + "-wal")
            uri = "file:%s?mode=ro%s" % (
                _uri_path(path),
                "&immutable=1" if whole else "",
            )
            database = sqlite3.connect(uri, uri=True, check_same_thread=False)
            try:
                imported = database.execute("SELECT 1 FROM meta WHERE name = 'imported'").fetchall()
            except sqlite3.DatabaseError:
                database.close()
                database, imported = sqlite3.connect(":memory:", check_same_thread=False), []
                database.executescript(_SCHEMA)
            if imported or not os.path.isfile(old):
                return cls(folder, database)
            database.close()
        database = sqlite3.connect(":memory:", check_same_thread=False)
        database.executescript(_SCHEMA)
        if os.path.isfile(old):
            with open(old, "rb") as lines:
                _import_lines(database, lines)
        return cls(folder, database)


def _uri_path(path: str) -> str:
    """A file name as an SQLite URI's path."""
    from urllib.parse import quote

    return quote(os.path.abspath(path).replace(os.sep, "/"), safe="/:")


class _Journal(_JournalView):
    """The output folder's record of what a batch did, so that a run killed
    at any point can be run again without paying twice.

    An SQLite database in WAL mode, every record committed with
    ``synchronous=FULL`` before the run goes on (a kill or a power cut
    loses nothing that was recorded, and a torn write is rolled back by
    SQLite itself): ``sending`` (the input's name and content) before its
    POST, ``submitted`` (the denoiseId) the moment the POST is answered,
    ``saved`` (the output's name) or ``failed`` (the server's message) at
    the end.  A lock file beside it is held under the OS's exclusive lock
    for the whole run, which the OS drops if the process dies.
    """

    def __init__(self, folder: str) -> None:
        import sqlite3

        self._lock_handle = open(os.path.join(folder, _LOCK_NAME), "a+b")  # noqa: SIM115
        try:
            if not _lock_file(self._lock_handle):
                raise BatchBusyError(
                    "another run is using %s (its journal %s is locked); nothing was done"
                    % (_printable(folder), JOURNAL_NAME)
                )
            self.path = os.path.join(folder, JOURNAL_NAME)
            # Autocommit (isolation_level=None): each record is its own
            # explicit transaction, committed before record() returns.
            database = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                database.execute("PRAGMA journal_mode=WAL")
                database.execute("PRAGMA synchronous=FULL")
                database.executescript(_SCHEMA)
                super().__init__(folder, database)
                self._import_old()
            except BaseException:
                database.close()
                raise
        except BaseException:
            self._lock_handle.close()
            raise
        #: Files hashed in this run, noted in the next transaction: losing
        #: them to a kill costs a hash, never a payment, so not an fsync each.
        self._hashed = []  # type: List[Tuple[str, str, str]]

    def _import_old(self) -> None:
        """Take in 0.4's JSON-lines journal, once, then rename it aside."""
        old = os.path.join(self.folder, _OLD_JOURNAL_NAME)
        if not os.path.isfile(old):
            return
        with open(old, "rb") as lines:
            # The stat of the file imported: the same file found again is one
            # a kill left before its rename; another is a 0.4 run's since.
            stat = _file_stat(os.fstat(lines.fileno()))
            done = self._rows("SELECT 1 FROM meta WHERE name = 'imported' AND value = ?", stat)
            if not done:
                with self._lock:
                    if not _lock_file(lines):  # a 0.4 run, still going
                        raise BatchBusyError(
                            "another run is using %s (its journal %s is locked); nothing was done"
                            % (_printable(self.folder), _OLD_JOURNAL_NAME)
                        )
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        _import_lines(self._db, lines)
                        self._db.execute(
                            "INSERT OR REPLACE INTO meta VALUES ('imported', ?)", (stat,)
                        )
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
        # Renamed aside, never over an earlier one: nothing in them is lost.
        target, number = old + ".imported", 1
        while os.path.exists(target):
            number += 1
            target = "%s.imported.%d" % (old, number)
        os.replace(old, target)

    def remember(self, real: str, status: os.stat_result, content: "_Content") -> None:
        with self._lock:
            self._hashed.append((real, _file_stat(status), content.key))

    def record(self, event: str, content: _Content, **fields: Any) -> None:
        """Write one step, durably, before going on."""
        self.record_all([(event, content, fields)])

    def record_all(
        self, steps: Iterable[Tuple[str, _Content, Dict[str, Any]]], at: Optional[float] = None
    ) -> None:
        """Write several steps in one transaction (each at ``at``, or now)."""
        import sqlite3

        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for event, content, fields in steps:
                        _write_step(self._db, event, content.key, fields, at or time.time())
                    self._note_hashed()
                    self._db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                # An OSError, as any file's: after an upload, the pipeline
                # turns it into a SaveError that names the job.
                full = "full" in str(exc)
                raise OSError(
                    errno.ENOSPC if full else errno.EIO,
                    "cannot write the journal %s: %s" % (_printable(self.path), exc),
                ) from exc

    def _note_hashed(self) -> None:
        for real, stat, key in self._hashed:
            self._db.execute(
                "INSERT OR REPLACE INTO inputs VALUES (?, ?, ?)",
                (real, stat, _content_id(self._db, key)),
            )
        self._hashed = []

    def forget_before(self, moment: float) -> int:
        """Forget the contents last touched before ``moment`` (time.time())
        whose output is gone; how many.  Outputs still there stay known,
        so that they are never paid for again nor replaced."""
        forgotten = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT content FROM events GROUP BY content HAVING max(at) < ?", (moment,)
                ).fetchall()
                for (number,) in rows:
                    outputs = self._db.execute(
                        "SELECT name FROM outputs WHERE content = ?", (number,)
                    ).fetchall()
                    if any(os.path.isfile(os.path.join(self.folder, n)) for (n,) in outputs):
                        continue
                    self._db.execute("DELETE FROM events WHERE content = ?", (number,))
                    self._db.execute("DELETE FROM outputs WHERE content = ?", (number,))
                    self._db.execute("DELETE FROM contents WHERE id = ?", (number,))
                    forgotten += 1
                # One pass: inputs has no index by content, to keep writes cheap.
                self._db.execute(
                    "DELETE FROM inputs WHERE content NOT IN (SELECT id FROM contents)"
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if forgotten:
                self._db.execute("VACUUM")  # give the space back: the point of forgetting
        return forgotten

    def close(self) -> None:
        import sqlite3

        with self._lock:
            try:
                if self._hashed:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._note_hashed()
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # Only what the stat cache learnt is lost: those inputs are
                # read once more next time.
                logger.warning("cannot write the journal %s: %s", _printable(self.path), exc)
            finally:
                self._db.close()
                self._lock_handle.close()  # closing the file drops the lock


def _write_step(database: Any, event: str, key: str, fields: Dict[str, Any], at: float) -> None:
    """One step's row, and for a saved output the content it now holds."""
    output = fields.get("output")
    output = os.path.basename(str(output)) if output is not None else None
    job = fields.get("denoiseId")
    number = _content_id(database, key)
    database.execute(
        "INSERT INTO events (at, event, content, file, denoise_id, output, error) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, event, number, fields.get("file"), job, output, fields.get("error")),
    )
    if event == "saved" and output is not None:
        _note_output(database, output, number, job, at)


def _content_id(database: Any, key: str) -> int:
    """The row number of a content's key, added if new."""
    row = database.execute("SELECT id FROM contents WHERE key = ?", (key,)).fetchone()
    if row is not None:
        return int(row[0])
    return int(database.execute("INSERT INTO contents (key) VALUES (?)", (key,)).lastrowid)


def _note_output(database: Any, name: str, number: int, job: Optional[str], at: float) -> None:
    """Note that the output ``name`` holds this content's result."""
    stem = os.path.splitext(name)[0].casefold()
    database.execute(
        "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?)",
        (name.casefold(), name, stem, number, job, at),
    )


def _import_lines(database: Any, lines: Iterable[bytes]) -> None:
    """Copy 0.4's journal lines into the tables, a line at a time; lines
    that are not whole records (a torn last one) are skipped."""
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            continue
        key = "%s:%s" % (record["sha256"], record.get("size"))
        at = record.get("at")
        at = float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
        values = [record.get(field) for field in ("file", "denoiseId", "output", "error")]
        values = [value if isinstance(value, str) else None for value in values]
        event = record.get("event")
        database.execute(
            "INSERT INTO events (at, event, content, file, denoise_id, output, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [at, str(event), _content_id(database, key)] + values,
        )
        output = values[2]
        if event == "saved" and output is not None and values[1] is not None:
            name = os.path.basename(output)
            # The newest "saved" line says which content an output holds.
            newer = database.execute(
                "SELECT 1 FROM outputs WHERE folded = ? AND at > ?", (name.casefold(), at or 0.0)
            ).fetchall()
            if not newer:
                _note_output(database, name, _content_id(database, key), values[1], at or 0.0)


@contextlib.contextmanager
def _batch_folder_held(target: Optional[str]) -> Iterator[None]:
    """Hold the lock of the batch folder that ``target`` is saved in, if it
    is one (its lock file is there), for as long as one file is denoised
    into it: a batch running there raises BatchBusyError at once, before
    anything is sent, and a batch started meanwhile exits as busy.  A
    folder no batch used gets no lock file; no target, nothing to hold."""
    if target is None:
        yield
        return
    folder = os.path.dirname(target) or os.curdir
    try:
        handle = open(os.path.join(folder, _LOCK_NAME), "r+b")  # noqa: SIM115
    except OSError:  # no batch's folder, or not ours to lock: nothing to keep
        yield
        return
    with handle:
        # Shared: single files saved there at once do not exclude each
        # other; a batch, which takes it exclusively, excludes them all.
        if not _lock_file(handle, shared=True):
            raise BatchBusyError(
                "a batch is running in %s (its journal %s is locked): saving into it now "
                "could replace a result the batch is writing; nothing was sent"
                % (_printable(folder), JOURNAL_NAME)
            )
        yield


def _lock_file(handle: Any, shared: bool = False) -> bool:
    """Take the OS's lock on an open file without waiting, exclusive or
    ``shared``; whether it was free.  The OS drops it when the holder dies."""
    handle.seek(0)
    return _lock_descriptor(handle.fileno(), shared)


def _lock_descriptor(fd: int, shared: bool = False) -> bool:
    """_lock_file() for a file descriptor (at its start, on Windows, where
    every lock is exclusive)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class _JournalEntry:
    """What the journal says of one input's content."""

    __slots__ = ("sent_at", "denoise_id", "saved", "failed", "earlier", "names")

    def __init__(self) -> None:
        #: When an upload whose answer was not recorded began, if one did.
        self.sent_at = None  # type: Optional[float]
        self.denoise_id = None  # type: Optional[str]
        #: The names of the outputs saved from this content, and when.
        self.saved = {}  # type: Dict[str, float]
        self.failed = None  # type: Optional[str]
        #: Jobs of earlier attempts (failed ones sent again): never this one.
        self.earlier = set()  # type: Set[str]
        #: The names the content was sent under (it may be renamed since).
        self.names = set()  # type: Set[str]

    def learn(self, record: Dict[str, Any]) -> None:
        event = record.get("event")
        at = record.get("at")
        named = record.get("denoiseId")
        job = _canonical_uuid(named) if isinstance(named, str) else None
        if isinstance(record.get("file"), str):
            self.names.add(record["file"])
        if event == "sending" and isinstance(at, (int, float)):
            if self.failed is not None:
                # Sent again after a failed job: a new attempt, whose
                # answer may be lost like any other.
                if self.denoise_id is not None:
                    self.earlier.add(self.denoise_id)
                self.denoise_id = self.failed = None
                self.saved = {}
            if self.denoise_id is None and self.sent_at is None:
                # The earliest upload whose answer is unknown: a lookup
                # must reach back to it.
                self.sent_at = float(at)
        elif event == "unsent":
            self.sent_at = None  # that upload was certainly not taken
        elif event == "submitted" and job is not None:
            self.denoise_id = job
            self.sent_at = self.failed = None
        elif event == "saved" and job is not None and isinstance(record.get("output"), str):
            self.denoise_id = job
            self.sent_at = None
            self.saved[os.path.basename(record["output"])] = (
                float(at) if isinstance(at, (int, float)) else 0.0
            )
        elif event == "failed" and job is not None:
            self.denoise_id = job
            self.sent_at = None
            self.failed = str(record.get("error") or "the job failed")


class _RealPaths:
    """os.path.realpath() for many files of few folders: each folder is
    resolved once, each file costs one lstat (Python's realpath costs one
    per component of the path, which a night of 10,000 inputs pays three
    times over)."""

    def __init__(self) -> None:
        self._folders = {}  # type: Dict[str, str]
        self._files = {}  # type: Dict[str, str]

    def __call__(self, path: str) -> str:
        real = self._files.get(path)
        if real is None:
            real = self._files[path] = self._resolve(path)
        return real

    def _resolve(self, path: str) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        real = os.path.join(real_folder, name)
        if name in ("", ".", "..") or os.path.islink(real):
            return os.path.realpath(path)
        return real


def _batch_inputs(paths: Any, realpath: Optional[_RealPaths] = None) -> List[Tuple[str, str]]:
    """The inputs as (path, output stem), the same file given twice kept
    once; ConfigurationError, before anything is sent, when two inputs
    could land on the same output.  The result's extension is known only
    at the end, so inputs sharing a base name without extension collide,
    whatever their extensions or folders (compared without case, as a
    case-insensitive file system would)."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise ConfigurationError("paths must be a list of file names, not one name")
    inputs = []  # type: List[Tuple[str, str]]
    seen = set()  # type: Set[str]
    realpath = realpath or _RealPaths()
    stems = {}  # type: Dict[str, str]
    for path in paths:
        name = os.fspath(path)
        name = name if isinstance(name, str) else os.fsdecode(name)
        real = realpath(name)
        if real in seen:
            continue
        seen.add(real)
        stem = os.path.splitext(os.path.basename(name))[0]
        if not stem:
            raise ConfigurationError("%s has no file name to save under" % _printable(name))
        other = stems.get(stem.casefold())
        if other is not None:
            raise ConfigurationError(
                "%s and %s would be saved under the same name (%s.*): rename one, or run them "
                "into different folders; nothing was sent"
                % (_printable(other), _printable(name), _printable(stem))
            )
        stems[stem.casefold()] = name
        inputs.append((name, stem))
    return inputs


_RESULT_EXTENSION = _Regex(r"\.[A-Za-z0-9]{1,8}")


def _result_extension(url: str) -> str:
    """The extension of the result's file name in its URL; ``.wav`` if none."""
    from urllib.parse import unquote, urlsplit

    try:
        path = unquote(urlsplit(url).path)
    except ValueError:
        return ".wav"
    extension = os.path.splitext(path.rsplit("/", 1)[-1])[1]
    return extension.lower() if _RESULT_EXTENSION.fullmatch(extension) else ".wav"


_SIZE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def _parse_size(text: str) -> int:
    """A byte count such as ``500M``, ``2G``, ``1.5GB``, ``300MiB`` or ``1000``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if match is None:
        raise ConfigurationError("not a size: %r (say 500M, 2G, 300MiB or a byte count)" % text)
    number, unit, binary = match.groups()
    scale = 1024 ** " kmgt".index(unit) if binary and unit else _SIZE_UNITS[unit]
    return int(float(number) * scale)


# What a batch does with each input.  One planner decides it, for the run
# and for --dry-run alike, so that the dry run cannot drift from the run.
_SEND = "send"
_LOOK_UP = "look up"
_FOLLOW = "follow"
_SKIP = "skip"
_REFUSE = "refuse"
_FAILED_JOB = "failed"  # its job failed earlier: not sent again unless asked
_LATER = "later"


class _Decision:
    """One input's action: ``send`` (or ``look up`` first, an earlier
    upload's answer lost), ``follow`` (its job is known: ``job``, or the
    one an earlier input of the same content gets), ``skip`` (``output``
    is saved already), or ``refuse``, ``failed`` or ``later`` (over the
    run's caps), which end with ``error``.  ``state`` is what the journal
    says of its content."""

    __slots__ = ("action", "detail", "job", "output", "error", "state")

    def __init__(
        self,
        action: str,
        detail: str = "",
        job: Optional[str] = None,
        output: Optional[str] = None,
        error: Optional[MunsitError] = None,
        state: "Optional[_JournalEntry]" = None,
    ) -> None:
        self.action = action
        self.detail = detail
        self.job = job
        self.output = output
        self.error = error
        self.state = state

    def result(self, path: str) -> FileResult:
        """The input's result when the decision ends it (skip, refuse,
        failed, later)."""
        return FileResult(
            path,
            output=self.output,
            denoise_id=self.job,
            error=self.error,
            skipped=self.action == _SKIP,
        )


class _Caps:
    """What is left of a run's ``max_files`` and ``max_bytes``."""

    def __init__(self, max_files: Optional[int], max_bytes: Optional[int]) -> None:
        self._files = max_files
        self._bytes = max_bytes
        self._lock = threading.Lock()

    def reserve(self, size: int) -> Optional[str]:
        """Count one upload of ``size`` bytes; or why it is over a cap."""
        with self._lock:
            if self._files is not None and self._files <= 0:
                return "not sent: this run's max_files cap is reached"
            if self._bytes is not None and size > self._bytes:
                return "not sent: this run's max_bytes cap is reached"
            if self._bytes is not None:
                self._bytes -= size
            if self._files is not None:
                self._files -= 1
            return None


class _Planner:
    """Decides each input's action from the journal (see :class:`_Decision`).

    The run asks it under the content's lock, once any earlier input of the
    same content has ended, so that the journal has that input's outcome;
    the dry run asks it in input order.  Only the caps are counted at
    different moments: the run reserves them right before an upload (an
    adopted job costs nothing), the dry run when it plans one
    (:meth:`admit`), since it cannot know what the account has."""

    def __init__(self, journal: _JournalView, options: _JobOptions) -> None:
        self._journal = journal
        self._retry_failed = options.retry_failed
        self._looks = options.tag and options.reuse
        self._first = {}  # type: Dict[str, str]  # content key -> first input with it
        self._lock = threading.Lock()

    def decide(self, path: str, stem: str, content: "_Content") -> _Decision:
        journal = self._journal
        saved = journal.saved_output(content.key, stem)
        if saved is not None:
            shown = _short_path(saved[0])
            return _Decision(_SKIP, "already saved as %s" % shown, saved[1], saved[0])
        taken = journal.taken_output(content.key, stem)
        if taken is not None:
            # Last night's input of this name had other content: its result
            # is paid for and must not be replaced.
            return _Decision(
                _REFUSE,
                "%s holds another content's result: move it away first" % os.path.basename(taken),
                error=ConfigurationError(
                    "not sent: %s already holds the result of another file of this name, "
                    "with other content; move that result away (or rename this input) and run "
                    "again" % _short_path(taken)
                ),
            )
        state = journal.state(content.key)
        with self._lock:
            first = self._first.setdefault(content.key, path)
        if state is not None and state.failed is not None and not self._retry_failed:
            error = DenoiseFailedError(state.failed)
            error.denoise_id = state.denoise_id
            detail = "job %s failed earlier (--retry-failed sends it again)" % state.denoise_id
            return _Decision(_FAILED_JOB, detail, state.denoise_id, error=error, state=state)
        if state is not None and state.denoise_id is not None and state.failed is None:
            detail = "job %s, submitted earlier: no upload" % state.denoise_id
            return _Decision(_FOLLOW, detail, state.denoise_id, state=state)
        if first != path:
            # The run does this one once the first has ended: by then the
            # journal has its job, or its result.
            return _Decision(_FOLLOW, "same content as %s: one job for both" % first, state=state)
        if state is not None and state.sent_at is not None and state.denoise_id is None:
            detail = "sent by an earlier run without an answer: looked up first"
            return _Decision(_LOOK_UP, detail, state=state)
        detail = "unless the account has its job (looked for first)" if self._looks else ""
        return _Decision(_SEND, detail, state=state)

    @staticmethod
    def refused(error: MunsitError) -> _Decision:
        """The decision for an input that cannot be read or sent."""
        return _Decision(_REFUSE, str(error), error=error)

    @staticmethod
    def admit(decision: _Decision, size: int, caps: _Caps) -> _Decision:
        """``decision``, or ``later`` when the upload it plans is over the
        caps (the dry run's count; the run's is right before its upload)."""
        if decision.action not in (_SEND, _LOOK_UP):
            return decision
        why = caps.reserve(size)
        if why is None:
            return decision
        return _Decision(
            _LATER, "over this run's --max-files/--max-bytes", error=NotSubmittedError(why)
        )


def _check_outside(folder: str, inputs: List[Tuple[str, str]], realpath: _RealPaths) -> None:
    """Refuse an input in the output folder (the run and --dry-run alike)."""
    real_folder = os.path.realpath(folder)
    for path, _ in inputs:
        if os.path.dirname(realpath(path)) == real_folder:
            raise ConfigurationError(
                "%s is in the output folder: its result would replace it, and the next run "
                "would pay for it again; save into another folder" % _printable(path)
            )


class _Batch:
    """One run over a folder: the inputs, the journal, the workers."""

    def __init__(
        self,
        inputs: List[Tuple[str, str]],
        output_dir: str,
        *,
        concurrency: int,
        deadline: Optional[float],
        on_progress: Any,
        settings: Dict[str, Any],
        check: bool,
        max_files: Optional[int],
        max_bytes: Optional[int],
        options: _JobOptions,
        policy: RetryPolicy,
        on_record: Optional[Callable[[Dict[str, Any]], Any]] = None,
        rehash: bool = False,
        realpath: Optional[_RealPaths] = None,
        session: Optional[requests.Session] = None,
    ) -> None:
        # A client made now checks the key and the base URL before anything.
        _Call(session=None, policy=policy, **settings).close()
        #: The pool the workers share (a Client's), or None: one each.
        self.session = session
        self.inputs = inputs
        self.folder = os.path.abspath(os.fspath(output_dir))
        self.concurrency = concurrency
        self.deadline = deadline
        self.settings = settings
        self.check = check
        self.options = options
        self.rehash = rehash
        self.stop = threading.Event()
        #: Set when no further file may begin: why they are not sent.
        self.held_back = None  # type: Optional[str]
        # The workers' pauses end as soon as the run is stopped.
        self.policy = dataclasses.replace(policy, sleep=self._sleep)
        self._sleep_policy = policy
        self.caps = _Caps(max_files, max_bytes)
        self._shared = threading.Lock()  # the realpath cache, the identities' locks
        self._identities = {}  # type: Dict[str, threading.Lock]
        self.gate = _Gate()
        self._clients = set()  # type: Set[_Call]
        self._clients_lock = threading.Lock()
        self.on_record = on_record
        self.on_progress = on_progress
        #: The batch's display, when it is drawn (on_progress a ProgressBar).
        self.display = None  # type: Optional[_Display]
        if isinstance(on_progress, ProgressBar):
            self.display = on_progress._display(len(inputs))
        import queue

        # The workers' results; what they give on their way out, once the
        # run is stopped, is read by leftovers().
        self._done = queue.Queue()  # type: queue.Queue[Optional[FileResult]]
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                "cannot make %s: %s" % (_printable(self.folder), exc.strerror)
            ) from None
        if not os.access(self.folder, os.W_OK):
            raise ConfigurationError("cannot write in %s" % _printable(self.folder))
        self._realpath = realpath or _RealPaths()
        _check_outside(self.folder, inputs, self._realpath)
        self.journal = _Journal(self.folder)
        self.planner = _Planner(self.journal, options)
        #: What the journal noted of the inputs' files (--rehash: nothing).
        self._known = {}  # type: Dict[str, Tuple[str, str, List[_NamedOutput]]]
        _sweep_temporaries(self.folder)

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def results(self) -> Iterator[FileResult]:
        import queue

        pending = queue.Queue()  # type: queue.Queue[Tuple[int, str, str]]
        done = self._done
        workers = []  # type: List[threading.Thread]
        try:
            # The inputs the journal knows saved, by their stat, end here,
            # before any worker: a rerun over a kept folder costs a stat each.
            if not self.rehash:
                self._known = self.journal.known_inputs(
                    [self._realpath(path) for path, _ in self.inputs]
                )
            for index, (path, stem) in enumerate(self.inputs):
                skipped = self._skipped(path, stem)
                if skipped is not None:
                    yield skipped
                else:
                    pending.put((index, path, stem))
            workers = [
                threading.Thread(
                    target=self._work,
                    args=(pending, done),
                    name="munsit-batch-%d" % n,
                    daemon=True,
                )
                for n in range(min(self.concurrency, pending.qsize()))
            ]
            for worker in workers:
                worker.start()
            running = len(workers)
            while running:
                # Each worker ends its results with None.  A timeout, however
                # long, keeps the wait interruptible by Ctrl-C on every Python.
                try:
                    result = done.get(timeout=5.0)
                except queue.Empty:
                    continue
                if result is None:
                    running -= 1
                else:
                    yield result
        finally:
            self._shut_down(workers)

    def leftovers(self) -> List[FileResult]:
        """Once :meth:`results` was stopped (Ctrl-C, SIGTERM): the results
        its workers gave on their way out, which it did not yield: the jobs
        they were following, the files they had not sent."""
        import queue

        found = []  # type: List[FileResult]
        while True:
            try:
                result = self._done.get_nowait()
            except queue.Empty:
                return found
            if result is not None:
                found.append(result)

    def _shut_down(self, workers: List[threading.Thread]) -> None:
        self.stop.set()
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            client.abort()
        for worker in workers:
            worker.join(10)
        if self.display is not None:
            self.display.close()
        self.journal.close()

    def _work(self, pending: "Any", done: "Any") -> None:
        import queue

        session = self.session or _new_session(pool_size=2)
        try:
            while True:
                try:
                    index, path, stem = pending.get_nowait()
                except queue.Empty:
                    return
                if self.stop.is_set() or self.held_back is not None:
                    why = self.held_back or "the run was stopped first"
                    done.put(FileResult(path, error=NotSubmittedError(why)))
                    continue
                try:
                    done.put(self._one(path, stem, session))
                except BaseException as exc:  # a bug: shown with its input, not lost
                    logger.error("unexpected failure on %s", _printable(path), exc_info=True)
                    done.put(FileResult(path, error=exc))
        finally:
            if session is not self.session:
                session.close()
            done.put(None)  # this worker is done

    def _one(self, path: str, stem: str, session: requests.Session) -> FileResult:
        """Denoise one input, as the journal says it stands."""
        entry = self._watch(path)
        try:
            self._check_time()
            real, status, known, saved = self._known_input(path, stem)
            if saved is not None:  # saved since the run began (the same content twice)
                entry.ended(_already_saved(saved[0]))
                return FileResult(path, output=saved[0], denoise_id=saved[1], skipped=True)
            source = _Source(path, self.check)
            try:
                if known is not None:
                    source.known_as(known)
                content = source.identify(self._check_time)
                if known is None and status is not None:
                    _remember_hashed(self.journal, real, status, content)
                with self._identity_lock(content.key):
                    return self._denoise_input(path, stem, source, content, session, entry)
            finally:
                source.close()
        except DenoiseFailedError as exc:
            entry.ended(exc)
            return FileResult(path, denoise_id=exc.denoise_id, error=exc)
        except (MunsitError, OSError) as exc:
            error = exc  # type: BaseException
            job = getattr(exc, "denoise_id", None)
            if isinstance(exc, _Aborted):  # never shown as such: it is ours
                error = NotSubmittedError("the run was stopped first")
                if job is not None:
                    error = _StoppedWhileFollowed("the run was stopped while the job was followed")
                    error.denoise_id = job
            if isinstance(exc, ProxyAuthenticationError):
                # Each further file would be one more failed login at the
                # company's directory: the files not yet begun wait.
                self.held_back = "not sent: the proxy refused its login for another file"
            entry.ended(_Outcome.of(error, _kind_of(exc)))
            return FileResult(path, denoise_id=job, error=error)

    def _skipped(self, path: str, stem: str) -> Optional[FileResult]:
        """The result of an input the journal knows by its stat, whose output
        is saved and still there; None for any other."""
        saved = self._known_input(path, stem)[3]
        if saved is None:
            return None
        self._watch(path).ended(_already_saved(saved[0]))
        return FileResult(path, output=saved[0], denoise_id=saved[1], skipped=True)

    def _known_input(
        self, path: str, stem: str
    ) -> "Tuple[str, Optional[os.stat_result], Optional[_Content], Optional[_SavedOutput]]":
        """(its real path, its stat, its content and saved output if the
        journal knows the file by that stat); --rehash knows nothing."""
        with self._shared:
            real = self._realpath(path)
        try:
            status = os.stat(real)
        except OSError:
            return real, None, None, None  # _Source says why
        noted = self._known.get(real)
        if noted is None or not _stat.S_ISREG(status.st_mode) or noted[0] != _file_stat(status):
            return real, status, None, None
        for name, job in sorted(noted[2]):
            output = os.path.join(self.folder, name)
            if os.path.splitext(name)[0] == stem and os.path.isfile(output):
                return real, status, None, (output, job)
        return real, status, _content_of(noted[1]), None

    def _check_time(self) -> None:
        """Raise if the run was stopped or its deadline passed."""
        if self.stop.is_set():
            raise _Aborted("stopped")
        if self.deadline is not None and self.policy.clock() >= self.deadline:
            raise NotSubmittedError("not sent: the run's deadline passed first")

    def _identity_lock(self, key: str) -> threading.Lock:
        with self._shared:
            return self._identities.setdefault(key, threading.Lock())

    def _denoise_input(
        self,
        path: str,
        stem: str,
        source: _Source,
        content: _Content,
        session: requests.Session,
        entry: _Observer,
    ) -> FileResult:
        decision = self.planner.decide(path, stem, content)
        if decision.action == _REFUSE:
            raise cast(MunsitError, decision.error)
        if decision.action == _SKIP:
            entry.ended(_already_saved(cast(str, decision.output)))
            return decision.result(path)
        if decision.action == _FAILED_JOB:
            entry.ended(cast(MunsitError, decision.error))
            return decision.result(path)
        state, known = decision.state, decision.job
        if self.on_record is not None:
            records = _JsonLines(
                self.on_record, os.path.basename(path), known, done=True, error=False
            )
            entry = _Observers(entry, records)
        hooks = _BatchHooks(self, path, stem, content, state)
        hooks.known_id = known
        client = _Call(session=session, deadline=self.deadline, policy=self.policy, **self.settings)
        with self._clients_lock:
            self._clients.add(client)
        try:
            if self.stop.is_set():
                client.abort()
            done = _denoise_one(client, source, None, entry, self.policy, self.options, hooks)
        except DenoiseFailedError as exc:
            self.journal.record(
                "failed", content, denoiseId=exc.denoise_id, error=exc.message[:2000]
            )
            raise
        finally:
            with self._clients_lock:
                self._clients.discard(client)
        output = os.path.join(self.folder, stem + _result_extension(done.url))
        self.journal.record(
            "saved", content, denoiseId=done.denoise_id, output=os.path.basename(output)
        )
        return FileResult(path, output=output, denoise_id=done.denoise_id)

    def _watch(self, path: str) -> _Observer:
        """An observer of one input: its row in the batch's display, or the
        caller's ``on_progress(path, event)``."""
        if self.display is not None:
            return self.display.watch(_clean(os.path.basename(path), None))
        on_progress = self.on_progress
        if on_progress is None:
            return _Observer()
        return _Callback(lambda event: on_progress(path, event), "progress")

    def _reserve(self, size: int) -> None:
        """Count a new upload against the run's caps, or raise."""
        why = self.caps.reserve(size)
        if why is not None:
            raise NotSubmittedError(why)


class _BatchHooks(_Hooks):
    """One input's part in a batch: the journal written around its upload,
    the run's caps and 429/402 gate, its output in the run's folder."""

    def __init__(
        self,
        batch: _Batch,
        path: str,
        stem: str,
        content: _Content,
        state: "Optional[_JournalEntry]",
    ) -> None:
        self._batch = batch
        self._name = os.path.basename(path)
        self._stem = stem
        self._content = content
        self._reserved = False
        self.swept = True  # by the batch, as it began
        if state is not None:
            self.sent_at = state.sent_at
            self.names = frozenset(state.names)
            self.excluded = frozenset(state.earlier)
            if state.failed is not None and state.denoise_id is not None:
                self.excluded = self.excluded | {state.denoise_id}  # sent again, as asked
        if not batch.options.tag:
            # Matched by name and size: never a job another input has.
            since = time.time() - batch.options.history.horizon - 86400.0
            self.excluded = self.excluded | batch.journal.jobs_of_others(content.key, since)

    def before_send(self, client: _Call, policy: RetryPolicy, name: str) -> None:
        if not self._reserved:
            self._batch._reserve(self._content.size)
            self._reserved = True
        self._batch.gate.wait_turn(client, policy)
        client.check_time("before the upload")
        # Journaled right before each POST, and undone when the server
        # certainly did not take it: a rerun looks up only what may exist,
        # and from the right moment.
        self._batch.journal.record("sending", self._content, file=self._name)

    def refused(self, error: MunsitError, policy: RetryPolicy) -> None:
        self._batch.gate.learn(error, policy)

    def unsent(self) -> None:
        self._batch.journal.record("unsent", self._content)

    def submitted(self, submission: Submission) -> None:
        self._batch.journal.record("submitted", self._content, denoiseId=submission.denoise_id)

    def output_for(self, done: DoneEvent) -> Optional[Tuple[str, str]]:
        output = os.path.join(self._batch.folder, self._stem + _result_extension(done.url))
        return _short_path(output), _output_path(output)


def _remember_hashed(
    journal: _JournalView, real: str, before: os.stat_result, content: _Content
) -> None:
    """Note a file's content by its stat, unless it changed while it was
    hashed or so recently that it may change again unseen."""
    try:
        after = os.stat(real)
    except OSError:
        return
    if _file_stat(after) != _file_stat(before):
        return
    if after.st_mtime_ns >= time.time_ns() - _RACY_NS:
        return
    journal.remember(real, after, content)


def _already_saved(output: str) -> _Outcome:
    return _Outcome(_ALREADY_SAVED, _clean("already saved as %s" % _short_path(output), None))


def _short_path(path: str) -> str:
    """``path`` relative to the working folder when it is inside it: what a
    display has room for."""
    try:
        here = os.path.join(os.getcwd(), "")
    except OSError:  # the working folder is gone
        return path
    if path.startswith(here) and os.path.isabs(path):
        return path[len(here) :]  # what relpath() says, at a fraction of its cost
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith(os.pardir) else relative


# --------------------------------------------------------------------------
# Demo server: a local simulator of the API (upload, list, progress, result)
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
def demo_server(
    *,
    fail: bool = False,
    duration: float = 4.0,
    max_upload: int = MAX_UPLOAD_BYTES,
    state_dir: Optional[str] = None,
) -> Iterator[str]:
    """Run a local simulator of the Munsit API; yield its base URL.

    The simulator listens on 127.0.0.1 (a free port) and speaks the
    documented protocol:

    - ``POST /denoise`` parses the multipart body for real (streamed to a
      temporary folder removed at the end, or to ``state_dir``), refuses a file over
      ``max_upload`` bytes or a body without an ``audio`` file part with the
      documented 400 body, and answers ``{"jobId", "denoiseId"}``;
    - ``GET /denoise`` lists the jobs it has seen, newest first, with their
      status (``pending``, then ``success`` or ``failed``), honouring
      ``offset`` and ``limit``;
    - ``GET /denoise/{id}/progress`` streams chunked SSE: ``processing``
      events (English and Arabic messages), heartbeat comments, then
      ``done`` (or ``error`` when ``fail``), over about ``duration`` seconds
      per job.  A submitted job starts when it is submitted, any other id
      when it is first asked for; reconnecting resumes it, and a finished
      job replays its final event;
    - the ``done`` URL serves the result: the uploaded file itself for a
      submitted job (under its own extension), a short WAV file otherwise.

    Without ``state_dir`` the jobs live as long as the server.  With it,
    the simulator keeps its jobs (their records and uploads) in that
    folder, so that a later server given the same folder -- in this
    process or another, even one running at the same time -- lists them,
    follows them where they are and serves their results, as the real API
    does across runs; it keeps the newest 50 jobs and drops older uploads.
    A job sent to a ``fail`` server fails wherever it is followed.  The
    command line's ``--demo`` uses ``<temp folder>/munsit-demo-<user id>``.

    Any non-empty API key is accepted; a missing one gets a 401.  Use it to
    try your integration without the real API::

        with demo_server() as base_url:
            done = denoise("in.wav", "out.wav", api_key="demo", base_url=base_url)
    """
    import http.server  # only the demo needs it: keep it off the import path
    import tempfile

    with contextlib.ExitStack() as stack:
        if state_dir is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="munsit-demo-"))
        else:
            folder = _own_folder(state_dir)
        state = _DemoState(fail, duration, max_upload, folder, state_dir is not None)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _demo_handler(state))
        server.daemon_threads = True
        server.request_queue_size = 64  # a batch connects many at once
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield "http://127.0.0.1:%d/api/v1" % server.server_address[1]
        finally:
            state.stop.set()
            server.shutdown()
            server.server_close()
            thread.join(5)


#: How many jobs a kept simulator remembers, and how many bytes of uploads it
#: keeps (the newest job's upload is always kept): a bounded folder in /tmp.
_DEMO_KEEP_JOBS = 50
_DEMO_KEEP_BYTES = 2 * 1024**3
_DEMO_STATE_FILE = "jobs.json"
_DEMO_LOCK_FILE = "lock"
# An upload file no record names is an upload still being received (by
# another run) or one a killed run left: removed once this old.
_DEMO_ORPHAN_SECONDS = 3600.0


def _demo_folder() -> str:
    """Where the command line's --demo keeps its simulator's jobs: one
    folder per user under the temporary folder."""
    import tempfile

    if hasattr(os, "getuid"):
        user = str(os.getuid())
    else:  # Windows: no uid, and the temporary folder is the user's own
        import getpass

        try:
            user = re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser())
        except Exception:  # getuser() raises whatever its lookups raise
            user = "user"
    return os.path.join(tempfile.gettempdir(), "munsit-demo-%s" % user)


def _own_folder(path: str) -> str:
    """``path``, created private if missing; refused unless it is a real
    folder of this user's (another user could plant one in a shared /tmp)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigurationError("cannot use the demo folder %s: %s" % (path, exc)) from exc
    if not _stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise ConfigurationError(
            "the demo folder %s is not a folder of yours: remove it, or set TMPDIR" % path
        )
    return path


class _DemoJob:
    """A job the simulator took: its record, and where its upload is kept."""

    def __init__(
        self,
        job: str,
        name: str,
        size: int,
        path: str,
        fail: bool = False,
        created: Optional[float] = None,
    ) -> None:
        self.id = job
        self.name = name
        self.size = size
        self.path = path
        self.fail = fail
        self.created = time.time() if created is None else created


class _DemoState:
    """The simulator's jobs, and when each started (wall-clock seconds, so
    that a kept job goes on where it was in another process).  When
    ``keep``, every change is a read-modify-write of the folder's
    jobs.json under the folder's lock, and every lookup reads it again:
    simulators sharing the folder, even at once, see one set of jobs."""

    def __init__(
        self, fail: bool, duration: float, max_upload: int, folder: str, keep: bool = False
    ) -> None:
        self.fail = fail
        self.duration = max(duration, 0.1)
        self.interval = self.duration / len(_DEMO_STEPS)
        self.max_upload = max_upload
        self.folder = folder
        self.keep = keep
        self.started = {}  # type: Dict[str, float]
        self.jobs = {}  # type: Dict[str, _DemoJob]
        self.lock = threading.Lock()
        self.stop = threading.Event()

    @contextlib.contextmanager
    def _state(self, change: bool) -> Iterator[None]:
        """Hold the state: the thread lock, and when kept, the folder's lock
        with the jobs read from the folder (and written back if ``change``)."""
        with self.lock:
            if not self.keep:
                yield
                return
            fd = os.open(os.path.join(self.folder, _DEMO_LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # Held for a file read or write at most: a short wait, bounded
                # so that a wedged holder cannot hang the demo.
                waited = 0
                while not _lock_descriptor(fd) and waited < 1000:
                    time.sleep(0.01)
                    waited += 1
                self._load()
                yield
                if change:
                    self._save()
            finally:
                os.close(fd)

    def _load(self) -> None:
        try:
            with open(os.path.join(self.folder, _DEMO_STATE_FILE), encoding="utf-8") as file:
                saved = json.load(file)
            jobs = {}
            for item in saved["jobs"]:
                job = _DemoJob(
                    str(item["id"]),
                    str(item["name"]),
                    int(item["size"]),
                    os.path.join(self.folder, str(item["id"])),
                    bool(item["fail"]),
                    float(item["created"]),
                )
                jobs[job.id] = job
            started = {str(k): float(v) for k, v in saved["started"].items()}
        except FileNotFoundError:
            jobs, started = {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("demo: starting afresh, the kept jobs are unreadable: %s", exc)
            jobs, started = {}, {}
        self.jobs, self.started = jobs, started

    def _save(self) -> None:
        jobs = sorted(self.jobs.values(), key=lambda job: job.created, reverse=True)
        kept = jobs[:_DEMO_KEEP_JOBS]
        total = 0
        for index, job in enumerate(kept):
            total += job.size
            if index and total > _DEMO_KEEP_BYTES:
                kept = kept[:index]
                break
        dropped = [job.path for job in jobs[len(kept) :]]
        self.jobs = {job.id: job for job in kept}
        ids = sorted(self.started, key=self.started.__getitem__, reverse=True)
        self.started = {job: self.started[job] for job in ids[: 2 * _DEMO_KEEP_JOBS]}
        self.started.update((job.id, self.started.get(job.id, job.created)) for job in kept)
        saved = {
            "jobs": [
                {
                    "id": job.id,
                    "name": job.name,
                    "size": job.size,
                    "fail": job.fail,
                    "created": job.created,
                }
                for job in kept
            ],
            "started": self.started,
        }
        target = os.path.join(self.folder, _DEMO_STATE_FILE)
        temporary = "%s.%s" % (target, _random_uuid()[:8])
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(saved, file)
            os.replace(temporary, target)  # whole or not at all
        except OSError as exc:
            logger.warning("demo: cannot keep the jobs in %s: %s", self.folder, exc)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return
        for path in dropped:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self._prune()

    def _prune(self) -> None:
        """Remove the uploads no kept job names, once old enough not to be
        one still being received."""
        now = time.time()
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if name in self.jobs or _canonical_uuid(name) != name:
                continue
            path = os.path.join(self.folder, name)
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime > _DEMO_ORPHAN_SECONDS:
                    os.unlink(path)

    def start_of(self, job: str) -> float:
        """When ``job`` started: when it was sent, or first asked for."""
        with self._state(change=False):
            if job in self.started:
                return self.started[job]
        with self._state(change=True):
            return self.started.setdefault(job, time.time())

    def add(self, record: _DemoJob) -> None:
        with self._state(change=True):
            self.jobs[record.id] = record
            self.started[record.id] = record.created

    def job(self, job: str) -> Optional[_DemoJob]:
        """The job sent as ``job``, or None."""
        with self._state(change=False):
            return self.jobs.get(job)

    def records(self) -> List[Dict[str, Any]]:
        """The jobs as GET /denoise shows them, newest first."""
        with self._state(change=False):
            jobs = sorted(self.jobs.values(), key=lambda job: job.created, reverse=True)
            started = dict(self.started)
        now = time.time()
        out = []
        for job in jobs:
            # A failing job ends when its stream sends the error, half-way.
            lasts = self.interval * (len(_DEMO_STEPS) // 2) if job.fail else self.duration
            ended = now - started.get(job.id, job.created) >= lasts
            status = ("failed" if job.fail else "success") if ended else "pending"
            extension = os.path.splitext(job.name)[1][1:].lower()
            out.append(
                {
                    "id": job.id,
                    "user_id": "demo-user",
                    "transaction_id": "demo-%s" % job.id[:8],
                    "audio_url": _demo_result_path(job) if status == "success" else None,
                    "original_audio_url": "/api/v1/uploads/%s" % job.id,
                    "file_name": job.name,
                    "audio_duration": round(job.size / 32000.0, 3),
                    "audio_size": job.size,
                    "audio_format": extension,
                    "source_type": "video" if extension in _VIDEO_TYPES else "audio",
                    "status": status,
                    "error": _DEMO_FAILURE if status == "failed" else None,
                    "created_at": _iso(job.created),
                    "updated_at": _iso(job.created + (lasts if ended else 0)),
                }
            )
        return out


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % (
        int(seconds * 1000) % 1000
    )


def _demo_result_path(job: _DemoJob) -> str:
    extension = os.path.splitext(job.name)[1].lower() or ".wav"
    return "/api/v1/files/%s_denoised%s" % (job.id, extension)


class _DemoUpload:
    """The simulator's multipart parser: reads a body of known length in
    pieces and keeps the ``audio`` file part in a file, never the whole body
    in memory."""

    def __init__(self, read: Callable[[int], bytes], length: int, boundary: bytes) -> None:
        self._read = read
        self._left = length
        self._buffer = b""
        self._delimiter = b"\r\n--" + boundary
        self.name = None  # type: Optional[str]
        self.size = 0
        #: Whether the closing delimiter came: a body cut short makes no job,
        #: as the API takes a job only once it has the whole upload.
        self.complete = False

    def _more(self) -> bool:
        if self._left <= 0:
            return False
        piece = self._read(min(self._left, 256 * 1024))
        if not piece:
            self._left = 0
            return False
        self._left -= len(piece)
        self._buffer += piece
        return True

    def parse(self, out: Any) -> None:
        """Find the parts; write the audio file part's bytes to ``out``."""
        # The body starts with the first delimiter (no CRLF before it).
        self._buffer = b"\r\n"
        while True:
            start = self._buffer.find(self._delimiter)
            while start < 0 and self._more():
                start = self._buffer.find(self._delimiter)
            if start < 0:
                return  # no further part: an unterminated body
            self._buffer = self._buffer[start + len(self._delimiter) :]
            while len(self._buffer) < 2 and self._more():
                pass
            if self._buffer[:2] == b"--":
                self.complete = True  # the closing delimiter
                return
            end = self._buffer.find(b"\r\n\r\n")
            while end < 0 and len(self._buffer) < 16384 and self._more():
                end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            headers = self._buffer[:end].decode("utf-8", "surrogateescape")
            self._buffer = self._buffer[end + 4 :]
            name, filename = _demo_disposition(headers)
            keep = name == "audio" and filename is not None and self.name is None
            if keep:
                self.name = filename
            self._part(out if keep else None)

    def _part(self, out: Any) -> None:
        """Consume one part's content up to (not past) the next delimiter."""
        keep = len(self._delimiter)
        while True:
            found = self._buffer.find(self._delimiter)
            if found >= 0:
                self._emit(self._buffer[:found], out)
                self._buffer = self._buffer[found:]
                return
            # Hold back what could be the start of a delimiter.
            if len(self._buffer) > keep:
                self._emit(self._buffer[:-keep], out)
                self._buffer = self._buffer[-keep:]
            if not self._more():
                return

    def _emit(self, data: bytes, out: Any) -> None:
        if out is not None and data:
            out.write(data)
            self.size += len(data)


def _demo_disposition(headers: str) -> Tuple[Optional[str], Optional[str]]:
    """A part's form field name and file name, read as a multipart parser
    reads a Content-Disposition header."""
    import email.message
    import email.utils

    message = email.message.Message()
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            message["Content-Disposition"] = value.strip()
    field = message.get_param("name", header="content-disposition")
    filename = message.get_param("filename", header="content-disposition")
    field = email.utils.collapse_rfc2231_value(field) if field is not None else None
    if filename is not None:
        filename = email.utils.collapse_rfc2231_value(filename)
    return field, filename


def _demo_handler(state: _DemoState) -> Any:
    """The simulator's request handler class, bound to one ``state``."""
    import http.server  # only the demo needs it: keep it off the import path

    settings = {"demo": state, "protocol_version": "HTTP/1.1"}
    return type("Handler", (_DemoRoutes, http.server.BaseHTTPRequestHandler), settings)


if TYPE_CHECKING:
    import http.server

    _DemoBase = http.server.BaseHTTPRequestHandler
else:
    _DemoBase = object


class _DemoRoutes(_DemoBase):
    """The simulator's answers, route by route; mixed into a
    ``BaseHTTPRequestHandler`` by :func:`_demo_handler`, which sets
    ``demo``."""

    demo: "_DemoState"  # set by _demo_handler

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("demo server: " + format, *args)

    def _keyed(self) -> bool:
        if (self.headers.get("x-api-key") or "").strip():
            return True
        self._send_json(401, {"errorCode": "40101", "errorMessage": "Invalid or missing API key"})
        return False

    def do_POST(self) -> None:
        path = self.path.split("?")[0].strip("/").split("/")
        length = _ascii_int(self.headers.get("Content-Length"))
        if path != ["api", "v1", "denoise"] or length is None:
            self._discard(length)
            self._send_json(404 if length is not None else 411, {"message": "Not found"})
            return
        if not self._keyed():
            return
        content_type = self.headers.get("Content-Type", "")
        boundary = None
        if content_type.split(";")[0].strip().lower() == "multipart/form-data":
            import email.message

            message = email.message.Message()
            message["Content-Type"] = content_type
            boundary = message.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            self._discard(length)
            self._send_json(400, {"errorCode": "40000", "errorMessage": "No audio file provided"})
            return
        job = _random_uuid()
        stored = os.path.join(self.demo.folder, job)
        upload = _DemoUpload(self.rfile.read, length, boundary.encode("utf-8"))
        with open(stored, "wb") as out:
            upload.parse(out)
        self._discard(upload._left)
        if upload.name is None or not upload.size or not upload.complete:
            os.unlink(stored)
            self._send_json(400, {"errorCode": "40000", "errorMessage": "No audio file provided"})
        elif upload.size > self.demo.max_upload:
            os.unlink(stored)
            self._send_json(
                400,
                {
                    "errorCode": "40001",
                    "errorMessage": "File size exceeds the maximum limit of 200MB. "
                    "File size: %dMB" % round(upload.size / 1e6),
                },
            )
        else:
            self.demo.add(_DemoJob(job, upload.name, upload.size, stored, self.demo.fail))
            self._send_json(200, {"jobId": job, "denoiseId": job})

    def _discard(self, length: Optional[int]) -> None:
        left = length or 0
        while left > 0:
            piece = self.rfile.read(min(left, 256 * 1024))
            if not piece:
                break
            left -= len(piece)

    def do_GET(self) -> None:
        target, _, query = self.path.partition("?")
        parts = target.strip("/").split("/")
        if parts[:3] == ["api", "v1", "files"] and len(parts) == 4:
            self._send_result(parts[3])
        elif parts == ["api", "v1", "denoise"]:
            if self._keyed():
                self._send_list(query)
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "denoise"] and parts[4] == "progress":
            job = _canonical_uuid(parts[3])
            if not self._keyed():
                return
            if job is None:
                self._send_json(404, {"message": "Denoising job not found"})
            else:
                self._send_progress(job)
        else:
            self._send_json(404, {"message": "Not found"})

    def _send_list(self, query: str) -> None:
        from urllib.parse import parse_qs

        asked = parse_qs(query)
        offset = _ascii_int((asked.get("offset") or ["0"])[0]) or 0
        limit = _ascii_int((asked.get("limit") or [""])[0])
        records = self.demo.records()[offset:]
        self._send_json(200, records[:limit] if limit else records)

    def _send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode("utf-8")
        # One answer per connection, so no handler thread outlives the server.
        self.close_connection = True
        self.send_response(status)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_result(self, name: str) -> None:
        job = self.demo.job(name.split("_")[0])
        self.close_connection = True
        if job is None:
            body = _demo_wav()
            self.send_response(200)
            self.send_header("Connection", "close")
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(job.size))
        self.end_headers()
        with open(job.path, "rb") as stored:
            for piece in iter(functools.partial(stored.read, 256 * 1024), b""):
                self.wfile.write(piece)

    def _send_progress(self, job: str) -> None:
        demo = self.demo
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        started = demo.start_of(job)
        submitted = demo.job(job)
        last = len(_DEMO_STEPS)
        fail = submitted.fail if submitted is not None else demo.fail
        failing_at = last // 2 if fail else None
        self._chunk("retry: 1000\n\n")
        step = min(max(int((time.time() - started) / demo.interval), 0), last)
        while step <= last:  # at most one pass over the steps
            if failing_at is not None and step >= failing_at:  # replayed to latecomers
                self._event(step, {"stage": "error", "message": _DEMO_FAILURE})
                break
            if step == last:
                if submitted is not None:
                    path = _demo_result_path(submitted)
                else:
                    path = "/api/v1/files/%s_denoised.wav" % job
                url = "http://%s%s" % (self.headers.get("Host"), path)
                self._event(step, {"stage": "done", "url": url, "denoiseId": job})
                break
            pct, message = _DEMO_STEPS[step]
            self._event(step, {"stage": "processing", "pct": pct, "message": message})
            due = started + (step + 1) * demo.interval
            while time.time() < due:
                if demo.stop.wait(min(demo.interval / 2, max(due - time.time(), 0))):
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
#: The upload was sent, its answer lost, and whether the job exists is unknown:
#: sending the file again may pay twice (SubmissionUnknownError).
EXIT_UNSURE = 6
EXIT_INTERRUPTED = 130
#: Another run holds the batch folder's journal: nothing was done.
EXIT_BUSY = 7
#: A certificate could not be verified: a setting to fix (REQUESTS_CA_BUNDLE),
#: not a failure to wait out.
EXIT_CERTIFICATE = 8
#: stdout's reader went away (``| head``): what a shell shows for SIGPIPE.
EXIT_BROKEN_PIPE = 141

_EPILOG = (
    """\
exit status:
  0    the job is done (its result URL is on stdout)
  1    the job failed (the server sent an error event)
  2    usage or configuration error (bad id, no API key, bad option, an
       -o that is not a regular file)
  3    the API refused the request (401/403: key; 402: the wallet cannot pay;
       400: the file (too large, too long, no file); 404: no such job), or
       the proxy refused its login (407: check the proxy URL's user and
       password; never tried twice)
  4    gave up: the deadline passed, the connection kept failing, or the
       download could not be written; worth trying again later
  5    the server sent something this client cannot read (or a result URL
       that is not a clean http(s) URL)
  6    denoise: the file was sent but the answer was lost, and the job could
       not be found for sure; check `munsit-progress list` before sending
       it again (it may be paid for already)
  7    denoise FILE... -o DIR: another run is using DIR; nothing was done
  8    a certificate could not be verified (the API's, a download's or an
       https proxy's); a private CA is trusted with REQUESTS_CA_BUNDLE=FILE
  130  interrupted (Ctrl-C or SIGTERM); no partial download is left
  141  stdout was closed by its reader (| head); nothing more is written

a batch (denoise FILE... -o DIR) exits 0 when every input is saved (now or
by an earlier run), else with the most serious of its files' statuses, in
this order: 3, 2, 8, 6, 5, 4, 1 (4 covers files a rerun will finish: the
deadline, failing connections, a cap, an interrupted run)

environment:
  MUNSIT_API_KEY       the API key (or use --api-key-file)
  MUNSIT_BASE_URL      the API's address (default %s)
  MUNSIT_DEMO_SECONDS  how long each --demo job takes (default 4)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY
                       the proxy, as requests reads them (a login goes in
                       the URL: http://user:password@host:port)
  REQUESTS_CA_BUNDLE   a PEM file of the CAs to trust (a private CA)

commands:
  munsit-progress DENOISE_ID [-o FILE]      follow a job (this page)
  munsit-progress denoise FILE [-o OUTPUT]  upload a file, follow it, save it
  munsit-progress list [--limit N]          the account's jobs, newest first
  munsit-progress journal DIR               what a batch's journal in DIR says
  (munsit-progress denoise --help, list --help, journal --help)

examples:
  munsit-progress --demo                    # a simulated job, no key needed
  munsit-progress --demo denoise in.wav -o clean.wav
  munsit-progress 5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1 -o clean.wav
  munsit-progress --json --quiet ID | jq -r '.pct // .url // .message'
"""
    % DEFAULT_BASE_URL
)


_THIS_PAGE = "follow a job (this page)"


def _epilog(command: Optional[str]) -> str:
    """The help pages' shared epilog; only the DENOISE_ID page (no command)
    is "this page"."""
    if command is None:
        return _EPILOG
    return _EPILOG.replace(_THIS_PAGE, _THIS_PAGE[: -len(" (this page)")])


def _parser() -> "argparse.ArgumentParser":
    parser = _argument_parser(
        prog="munsit-progress",
        description="Follow a Munsit denoise job until it ends: show its progress,\n"
        "print the URL of the denoised audio, optionally download it.",
        epilog=_epilog(None),
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
        help="follow a simulated job on a local simulator of the API (no key, no "
        "network); it keeps its jobs in %s" % _demo_folder(),
    )
    demo.add_argument(
        "--demo-fail",
        action="store_true",
        help="like --demo, but the simulated job fails (unless it was sent by an earlier "
        "--demo run)",
    )
    parser.add_argument("--version", action="version", version="munsit-progress " + __version__)
    return parser


def _add_common_options(
    parser: "argparse.ArgumentParser",
    timeout_help: str = "give up (exit 4) if the job has not ended within SECONDS",
) -> None:
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
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
        self._lock = threading.Lock()  # a batch's workers write JSON lines
        isatty = getattr(sys.stderr, "isatty", None)
        try:
            self.log_mode = not (isatty is not None and isatty())
        except (OSError, ValueError):
            self.log_mode = True
        self._stderr_gone = False

    def out(self, text: str) -> None:
        """One line of result on stdout."""
        stdout = sys.stdout
        if stdout is None:  # started with stdout closed (>&-)
            raise _StdoutClosed()
        try:
            with self._lock:
                stdout.write(_encodable(stdout, text) + "\n")
                stdout.flush()
        except (BrokenPipeError, ValueError):  # ValueError: stdout closed in-process
            raise _StdoutClosed() from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EINVAL):
                raise _StdoutClosed() from None
            raise

    def err(self, text: str) -> None:
        """One line on stderr, prefixed with the program's name (and the
        time, in a log)."""
        self.err_line("munsit-progress: " + _printable(text))

    def err_line(self, line: str) -> None:
        """A line on stderr as it is (timestamped in a log), in the command
        line's words."""
        line = _cli_text(line)
        stderr = sys.stderr
        if self._stderr_gone or stderr is None:
            return
        if self.log_mode:
            line = "%s %s" % (time.strftime("%Y-%m-%d %H:%M:%S"), line)
        try:
            stderr.write(_encodable(stderr, line) + "\n")
            stderr.flush()
        except (OSError, ValueError):
            self._stderr_gone = True

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err(text)

    def error(self, text: str) -> None:
        if self.verbose and sys.stderr is not None:
            import traceback

            with contextlib.suppress(OSError, ValueError):
                traceback.print_exc(file=sys.stderr)
        self.err("error: " + text)

    def record(self, fields: Mapping[str, Any]) -> None:
        """One JSON object on its own line of stdout, secrets redacted."""
        self.out(
            json.dumps(
                {k: _redact(_cli_text(v)) if isinstance(v, str) else v for k, v in fields.items()}
            )
        )

    def result(self, done: DoneEvent, as_json: bool, **fields: Any) -> None:
        """The done event on stdout: its URL alone on a line, or its JSON
        line.  Either way only a clean http(s) URL: ``jq -r .url`` must not
        write escapes to a terminal either."""
        if not _is_web_url(done.url):
            raise ProtocolError(
                "the result URL is not a clean http(s) URL: %s" % _clean(done.url, 100)
            )
        if as_json:
            self.record(dict(done.to_dict(), **fields))
        else:
            self.out(_redact(done.url))


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(arguments)
    if command is not None:
        return _main_command(command, arguments)
    parser = _parser()
    parsed = _parse(parser, arguments)
    if isinstance(parsed, int):
        return parsed
    args = parsed
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
            folder = _demo_folder()
            with demo_server(
                fail=args.demo_fail, duration=_demo_seconds(), state_dir=folder
            ) as base_url:
                job = args.denoise_id or _random_uuid()
                console.note(_demo_banner(folder, job))
                return _follow_id_command(args, console, job, "demo", base_url, bar)
        api_key = _cli_key(args)
        return _follow_id_command(args, console, args.denoise_id, api_key, args.base_url, bar)

    bar = _cli_bar(args)
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


# Options that take a value, so that their value is not taken for a command.
_VALUED_OPTIONS = frozenset(
    (
        "-o",
        "--output",
        "--timeout",
        "--api-key-file",
        "--base-url",
        "--limit",
        "--offset",
        "--jobs",
        "--max-files",
        "--max-bytes",
        "--forget-before",
    )
)
_COMMANDS = ("denoise", "list", "journal")


def _command_of(argv: List[str]) -> Optional[str]:
    """The command named by the first argument that is not an option."""
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--":
            return None
        elif argument.startswith("-"):
            skip = argument in _VALUED_OPTIONS
        else:
            return argument if argument in _COMMANDS else None
    return None


def _command_parser(command: str) -> "argparse.ArgumentParser":
    import argparse

    if command == "denoise":
        parser = _argument_parser(
            prog="munsit-progress denoise",
            description="Upload an audio or video file, follow its denoise job and print the\n"
            "URL of the result (or, with -o, save it and print the saved path).",
            epilog=_epilog("denoise"),
        )
        parser.add_argument("command", choices=["denoise"], help=argparse.SUPPRESS)
        parser.add_argument(
            "files",
            nargs="+",
            metavar="FILE",
            help="the file to denoise; several, with -o DIR, for a batch",
        )
        parser.add_argument(
            "-o",
            "--output",
            metavar="OUTPUT",
            help="save the denoised audio to OUTPUT (checked before the upload); with several "
            "files, or a folder, save each into that folder and keep a journal there so that "
            "a rerun goes on where a killed run stopped",
        )
        batch = parser.add_argument_group("batches (several files, -o DIR)")
        batch.add_argument(
            "--jobs", type=int, default=4, metavar="N", help="files in flight at once (default 4)"
        )
        batch.add_argument(
            "--dry-run",
            action="store_true",
            help="say what would be sent, followed or skipped, and send nothing",
        )
        batch.add_argument(
            "--max-files", type=int, metavar="N", help="send at most N files in this run"
        )
        batch.add_argument(
            "--rehash",
            action="store_true",
            help="read and hash every input, even those the journal knows unchanged (same "
            "size, modification time, inode and device)",
        )
        batch.add_argument(
            "--max-bytes",
            metavar="SIZE",
            help="send at most SIZE bytes in this run (500M, 2G, 300MiB...)",
        )
        jobs = parser.add_argument_group(
            "finding jobs (a file's job is found by its content before it is sent)"
        )
        jobs.add_argument(
            "--retry-failed",
            action="store_true",
            help="send the file again when its job failed on the server",
        )
        jobs.add_argument(
            "--no-reuse",
            action="store_true",
            help="always send the file as a new job, even when the account has its job",
        )
        jobs.add_argument(
            "--no-tag",
            action="store_true",
            help="send the file under its plain name, without the content tag; it is "
            "then not looked for before it is sent",
        )
        jobs.add_argument(
            "--horizon",
            type=float,
            default=DEFAULT_HORIZON / 86400,
            metavar="DAYS",
            help="how many days back to look for the file's job (default %(default)g)",
        )
        parser.add_argument(
            "--no-check",
            action="store_true",
            help="send the file even if its type, size or length is outside the API's limits",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="write each step to stdout as one JSON object per line, naming the file "
            "and the denoiseId (progress still goes to stderr unless -q)",
        )
    elif command == "journal":
        parser = _argument_parser(
            prog="munsit-progress journal",
            description="Show what the batch journal in DIR (%s) says: each step of each\n"
            "input, oldest first, then a count of where the inputs stand." % JOURNAL_NAME,
        )
        parser.add_argument("command", choices=["journal"], help=argparse.SUPPRESS)
        parser.add_argument("folder", metavar="DIR", help="a batch's output folder")
        parser.add_argument(
            "--json",
            action="store_true",
            help="write each step as one JSON object per line (0.4's journal lines)",
        )
        parser.add_argument(
            "--forget-before",
            metavar="DATE",
            help="forget the inputs last seen before DATE (YYYY-MM-DD, local time) whose "
            "outputs are gone from DIR; takes the folder's lock",
        )
        parser.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
        parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
        return parser
    else:
        parser = _argument_parser(
            prog="munsit-progress list",
            description="List the account's denoise jobs, newest first.",
            epilog=_epilog("list"),
        )
        parser.add_argument("command", choices=["list"], help=argparse.SUPPRESS)
        parser.add_argument(
            "--limit",
            type=int,
            default=20,
            metavar="N",
            help="show at most N jobs (default 20; 0 shows them all)",
        )
        parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip N jobs")
        parser.add_argument(
            "--json", action="store_true", help="write each job as one JSON object per line"
        )
    if command == "list":
        _add_common_options(parser, "give up (exit 4) if the list has not been read within SECONDS")
    else:
        _add_common_options(
            parser,
            "give up (exit 4) if the upload, the job and the download have not ended "
            "within SECONDS (a rerun goes on with the same job)",
        )
    demo = parser.add_mutually_exclusive_group()
    demo.add_argument(
        "--demo",
        action="store_true",
        help="run against a simulator of the API on a local server (no key, no network); "
        "it keeps its jobs in %s" % _demo_folder(),
    )
    if command == "denoise":
        demo.add_argument(
            "--demo-fail",
            action="store_true",
            help="like --demo, but the simulated jobs sent in this run fail",
        )
    return parser


def _main_command(command: str, argv: List[str]) -> int:
    parser = _command_parser(command)
    parsed = _parse(parser, argv)
    if isinstance(parsed, int):
        return parsed
    args = parsed
    if command == "journal":
        console = _Console(args.quiet, args.verbose)
        return _run_command(args, console, None, lambda: _journal_command(args, console))
    demo = args.demo or getattr(args, "demo_fail", False)
    if demo and (args.base_url or args.api_key_file):
        return _usage(parser, "--demo runs its own local server: drop --base-url/--api-key-file")
    if args.timeout is not None and not 0 < args.timeout < math.inf:
        return _usage(parser, "--timeout must be a positive number of seconds")
    console = _Console(args.quiet, args.verbose)
    if command == "list":
        if args.limit < 0 or args.offset < 0:
            return _usage(parser, "--limit and --offset must be 0 or more")
        return _run_command(args, console, None, lambda: _list_command(args, console))
    if args.output == "":
        return _usage(parser, "-o needs a file name")
    many = len(args.files) > 1 or (
        args.output is not None
        and (os.path.isdir(args.output) or args.output.endswith(("/", os.sep)))
    )
    bar = _cli_bar(args)
    if many:
        if args.output is None:
            return _usage(parser, "several files need -o DIR, the folder to save them in")
        if args.jobs < 1 or (args.max_files is not None and args.max_files < 0):
            return _usage(parser, "--jobs must be 1 or more and --max-files 0 or more")
        if args.max_bytes is not None:
            try:
                args.max_bytes = _parse_size(args.max_bytes)
            except ConfigurationError as exc:
                return _usage(parser, str(exc))
        return _run_command(args, console, bar, lambda: _batch_command(args, console, bar))
    if args.dry_run or args.max_files is not None or args.max_bytes is not None:
        return _usage(parser, "--dry-run, --max-files and --max-bytes are for -o DIR")
    return _run_command(args, console, bar, lambda: _denoise_command(args, console, bar))


def _with_api(
    args: Any, console: _Console, run: Callable[[Optional[str], Optional[str]], int]
) -> int:
    """Run ``run(api_key, base_url)`` against the API, or the simulator."""
    if args.demo or getattr(args, "demo_fail", False):
        folder = _demo_folder()
        fail = getattr(args, "demo_fail", False)
        with demo_server(fail=fail, duration=_demo_seconds(), state_dir=folder) as base_url:
            console.note(_demo_banner(folder, None, fail))
            return run("demo", base_url)
    return run(_cli_key(args), args.base_url)


def _demo_banner(folder: str, job: Optional[str], fail: bool = False) -> str:
    """What --demo says first: what it simulates, and where its jobs are kept."""
    if job is not None:
        what = "following job %s on a simulator of the Munsit API" % job
    elif fail:
        what = "a simulator of the Munsit API whose new jobs fail"
    else:
        what = "a simulator of the Munsit API"
    return "demo: %s, on a local server (no key, no network); its jobs are kept in %s" % (
        what,
        folder,
    )


_DEMO_SECONDS_ENV = "MUNSIT_DEMO_SECONDS"


def _demo_seconds() -> float:
    """How long each of --demo's simulated jobs takes ($MUNSIT_DEMO_SECONDS)."""
    try:
        seconds = float(os.environ.get(_DEMO_SECONDS_ENV) or 4.0)
    except ValueError:
        return 4.0
    return seconds if 0 < seconds < 3600 else 4.0


def _denoise_command(args: Any, console: _Console, bar: Optional[ProgressBar]) -> int:
    """``munsit-progress denoise FILE``: upload, follow, print or save."""
    path = args.files[0]
    name = os.path.basename(path)

    # The display and --json's lines both watch the job.
    watchers = [] if bar is None else [bar._watch]  # type: List[_Observer]
    if args.json:
        watchers.append(_JsonLines(console.record, name, done=False, error=True))
    observer = _Observers(*watchers)

    def run(api_key: Optional[str], base_url: Optional[str]) -> int:
        policy = RetryPolicy()
        options = _cli_options(args)
        with _Call(
            api_key,
            base_url,
            None,
            deadline=_deadline(args.timeout, policy.clock),
            policy=policy,
            allow_http=args.allow_http,
        ) as client:
            target = None  # type: Optional[Tuple[str, str]]
            if args.output is not None:
                target = (args.output, _output_path(args.output))
            source = _Source(path, not args.no_check)
            try:
                with _batch_folder_held(None if target is None else target[1]):
                    done = _denoise_one(client, source, target, observer, policy, options, _Hooks())
            finally:
                source.close()
        if args.json:
            console.result(done, True, file=name)
            if args.output is not None:
                console.record(
                    {
                        "stage": "saved",
                        "path": args.output,
                        "file": name,
                        "denoiseId": done.denoise_id,
                    }
                )
        elif args.output is not None:
            console.out(_printable(args.output))
        else:
            console.result(done, False)
        return EXIT_OK

    return _with_api(args, console, run)


def _cli_options(args: Any) -> _JobOptions:
    """How the command line's options find and keep jobs."""
    horizon = args.horizon * 86400.0
    if not 0 < horizon < math.inf:
        raise ConfigurationError("--horizon must be a positive number of days")
    return _JobOptions(
        tag=not args.no_tag,
        reuse=not args.no_reuse,
        retry_failed=args.retry_failed,
        horizon=horizon,
    )


_OUTCOMES = (
    (EXIT_REJECTED, "refused"),
    (EXIT_USAGE, "not sent"),
    (EXIT_CERTIFICATE, "untrusted"),
    (EXIT_UNSURE, "unsure"),
    (EXIT_PROTOCOL, "bad answer"),
    (EXIT_GAVE_UP, "gave up"),
    (EXIT_JOB_FAILED, "failed"),
)


def _outcome(result: FileResult) -> Tuple[int, str]:
    """A batch input's exit status and the word the summary shows for it."""
    error = result.error
    if error is None:
        return EXIT_OK, "already saved" if result.skipped else "saved"
    status = _exit_status(error) if isinstance(error, MunsitError) else EXIT_GAVE_UP
    if isinstance(error, NotSubmittedError):
        return status, "not sent yet"
    if isinstance(error, _StoppedWhileFollowed):
        return status, "pending"
    return status, dict(_OUTCOMES).get(status, "gave up")


def _batch_status(results: List[FileResult]) -> int:
    """The batch's exit status: 0 if all are saved, else the most serious."""
    found = {_outcome(result)[0] for result in results}
    for status, _ in _OUTCOMES:
        if status in found:
            return status
    return EXIT_OK


def _batch_command(args: Any, console: _Console, bar: Optional[ProgressBar]) -> int:
    """``munsit-progress denoise FILE... -o DIR``: a journaled batch."""
    realpath = _RealPaths()
    inputs = _batch_inputs(args.files, realpath)
    if args.dry_run:
        return _dry_run(args, console, inputs)

    def record(fields: Dict[str, Any]) -> None:
        if args.json:
            console.record(fields)

    def run(api_key: Optional[str], base_url: Optional[str]) -> int:
        policy = RetryPolicy()
        batch = _Batch(
            inputs,
            args.output,
            concurrency=args.jobs,
            deadline=_deadline(args.timeout, policy.clock),
            on_progress=bar,
            settings=dict(api_key=api_key, base_url=base_url, allow_http=args.allow_http),
            check=not args.no_check,
            max_files=args.max_files,
            max_bytes=args.max_bytes,
            options=_cli_options(args),
            policy=policy,
            on_record=record,
            rehash=args.rehash,
            realpath=realpath,
        )
        finished = {}  # type: Dict[str, FileResult]
        try:
            for result in batch.results():
                finished[result.path] = result
        except KeyboardInterrupt:
            return _batch_stopped(args, console, batch, inputs, finished)
        results = _in_order(inputs, finished)
        _batch_report(args, console, results)
        _failed_hint(console, results)
        return _batch_status(results)

    return _with_api(args, console, run)


def _batch_stopped(
    args: Any,
    console: _Console,
    batch: _Batch,
    inputs: List[Tuple[str, str]],
    finished: Dict[str, FileResult],
) -> int:
    """A batch stopped by Ctrl-C or SIGTERM: what is saved, what is pending
    and under which job, and that a rerun finishes it."""
    for result in batch.leftovers():
        finished.setdefault(result.path, result)
    _batch_report(args, console, _in_order(inputs, finished))
    console.error(
        "interrupted; run the same command again to finish: what is saved is kept, "
        "and the jobs pending are followed, not sent again"
    )
    return EXIT_INTERRUPTED


def _in_order(inputs: List[Tuple[str, str]], finished: Dict[str, FileResult]) -> List[FileResult]:
    """Each input's result, in the order given (one never reached: not
    sent)."""
    return [
        finished.get(path) or FileResult(path, error=NotSubmittedError("not reached"))
        for path, _ in inputs
    ]


def _failed_hint(console: _Console, results: List[FileResult]) -> None:
    """After a batch, the way to send again the files whose job failed on
    the server: following those jobs would only replay their error."""
    failed = [
        os.path.basename(result.path)
        for result in results
        if isinstance(result.error, DenoiseFailedError)
    ]
    if not failed:
        return
    shown = ", ".join(failed[:3]) + (", ..." if len(failed) > 3 else "")
    console.note(
        "%d file(s) failed on the server (%s): following their jobs only replays the error; "
        "--retry-failed sends them again, each as a new job" % (len(failed), shown)
    )


def _batch_report(args: Any, console: _Console, results: List[FileResult]) -> None:
    """The end of a batch: every input in the order given, with its outcome
    and job, on stderr (unless -q); the saved files on stdout (or, with
    --json, a result line per input)."""
    rows = [("FILE", "OUTCOME", "DENOISE ID", "OUTPUT OR REASON")]
    for result in results:
        _, word = _outcome(result)
        detail = result.output or (str(result.error) if result.error is not None else "")
        rows.append((os.path.basename(result.path), word, result.denoise_id or "-", detail))
    if not args.quiet:
        widths = [max(len(_printable(row[column])) for row in rows) for column in range(3)]
        for row in rows:
            cells = [_printable(_redact(cell)) for cell in row]
            console.err_line(
                "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[3]
            )
    for result in results:
        status, word = _outcome(result)
        if args.json:
            fields = {
                "stage": "result",
                "file": os.path.basename(result.path),
                "path": result.path,
                "outcome": word,
                "status": status,
                "denoiseId": result.denoise_id,
                "output": result.output,
                "error": str(result.error) if result.error is not None else None,
            }
            console.record(fields)
        elif result.output is not None:
            console.out(_printable(result.output))


def _dry_run(args: Any, console: _Console, inputs: List[Tuple[str, str]]) -> int:
    """What a batch would do, from the journal, without sending anything
    (nor taking the folder's lock: another run may be using it).  Exits as
    the run would for what the journal decides: 2 when an input would be
    refused, 1 when a job failed earlier (without --retry-failed); what
    the caps hold back is planned, not an error."""
    folder = os.path.abspath(args.output)
    _check_outside(folder, inputs, _RealPaths())
    journal = _JournalView.reading(folder)
    try:
        planned = _dry_run_plan(args, inputs, journal)
    finally:
        journal.close()
    _dry_run_table(console, planned)
    return _batch_status(
        [
            FileResult(path, error=decision.error)
            for decision, _, path in planned
            if decision.action != _LATER
        ]
    )


def _dry_run_plan(
    args: Any, inputs: List[Tuple[str, str]], journal: _JournalView
) -> List[Tuple[_Decision, Optional[int], str]]:
    """Each input's decision, its size if known, and its path."""
    planner = _Planner(journal, _cli_options(args))
    caps = _Caps(args.max_files, args.max_bytes)
    realpath = _RealPaths()
    planned = []  # type: List[Tuple[_Decision, Optional[int], str]]
    for path, stem in inputs:
        content = _dry_run_content(journal, path, args, realpath)
        if isinstance(content, ConfigurationError):
            planned.append((planner.refused(content), None, path))
            continue
        decision = planner.admit(planner.decide(path, stem, content), content.size, caps)
        planned.append((decision, content.size, path))
    return planned


def _dry_run_table(console: _Console, planned: List[Tuple[_Decision, Optional[int], str]]) -> None:
    """The dry run's table, then the line that sums it up."""
    rows = [("ACTION", "SIZE", "FILE", "")]
    counts = {}  # type: Dict[str, int]
    to_send = 0
    for decision, size, path in planned:
        rows.append((decision.action, "-" if size is None else _size(size), path, decision.detail))
        counts[decision.action] = counts.get(decision.action, 0) + 1
        if decision.action in (_SEND, _LOOK_UP):
            to_send += size or 0
    widths = [max(len(_printable(row[column])) for row in rows) for column in range(3)]
    for row in rows:
        cells = [_printable(cell) for cell in row]
        console.out(
            "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[3]
        )
    console.out(
        "would send %d file(s), %s; %s"
        % (
            counts.get(_SEND, 0) + counts.get(_LOOK_UP, 0),
            _size(to_send),
            ", ".join("%s %d" % (action, count) for action, count in sorted(counts.items())),
        )
    )


def _dry_run_content(
    journal: _JournalView, path: str, args: Any, realpath: _RealPaths
) -> "Union[_Content, ConfigurationError]":
    """An input's content as a run would know it: by its stat when the
    journal knows the file unchanged, else read; or why it is refused."""
    real = realpath(path)
    try:
        # The run opens and checks every input, known or not.
        source = _Source(path, not args.no_check)
    except ConfigurationError as exc:
        return exc
    try:
        if not args.rehash:
            with contextlib.suppress(OSError):
                status = os.stat(real)
                if _stat.S_ISREG(status.st_mode):
                    known = journal.known_content(real, status)
                    if known is not None:
                        return known
        return source.identify(lambda: None)
    finally:
        source.close()


def _list_command(args: Any, console: _Console) -> int:
    """``munsit-progress list``: a table, or JSON lines with --json."""

    def run(api_key: Optional[str], base_url: Optional[str]) -> int:
        jobs = list_jobs(
            limit=args.limit or None,
            offset=args.offset,
            api_key=api_key,
            base_url=base_url,
            timeout=args.timeout,
        )
        if args.json:
            for job in jobs:
                console.record(job.to_dict())
            return EXIT_OK
        if not jobs:
            console.note("no jobs")
            return EXIT_OK
        rows = [("CREATED", "STATUS", "DENOISE ID", "SIZE", "LENGTH", "FILE")]
        for job in jobs:
            rows.append(
                (
                    (job.created_at or "-")[:19].replace("T", " "),
                    job.status,
                    job.denoise_id,
                    _size(job.audio_size) if job.audio_size is not None else "-",
                    "%d:%02d" % divmod(int(job.audio_duration), 60)
                    if job.audio_duration is not None
                    else "-",
                    job.file_name or "-",
                )
            )
        widths = [max(len(_printable(row[column])) for row in rows) for column in range(5)]
        for row in rows:
            cells = [_printable(_redact(cell)) for cell in row]
            console.out(
                "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[5]
            )
        return EXIT_OK

    return _with_api(args, console, run)


def _journal_command(args: Any, console: _Console) -> int:
    """``munsit-progress journal DIR``: the journal's steps, or forget old ones."""
    folder = os.path.abspath(args.folder)
    if not any(
        os.path.isfile(os.path.join(folder, name)) for name in (JOURNAL_NAME, _OLD_JOURNAL_NAME)
    ):
        raise ConfigurationError("there is no batch journal in %s" % _printable(folder))
    if args.forget_before is not None:
        import datetime

        try:
            moment = datetime.datetime.strptime(args.forget_before, "%Y-%m-%d").timestamp()
        except ValueError:
            raise ConfigurationError(
                "--forget-before takes a date, YYYY-MM-DD; got %r" % args.forget_before
            ) from None
        journal = _Journal(folder)
        try:
            forgotten = journal.forget_before(moment)
        finally:
            journal.close()
        console.note("forgot %d input(s) last seen before %s" % (forgotten, args.forget_before))
        return EXIT_OK
    view = _JournalView.reading(folder)
    try:
        for record in view.records():
            if args.json:
                console.record(record)
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("at") or 0))
            detail = record.get("output") or record.get("file") or ""
            if record.get("error"):
                detail = "%s: %s" % (detail, record["error"]) if detail else record["error"]
            console.out(
                _printable(
                    "%s  %-9s  %s  %10s  %-36s  %s"
                    % (
                        when,
                        record["event"],
                        record["sha256"][:12],
                        _size(record["size"]) if isinstance(record["size"], int) else "?",
                        record.get("denoiseId") or "-",
                        detail,
                    )
                )
            )
        counts = view.standing()
    finally:
        view.close()
    console.note(
        "%d input(s): %s"
        % (
            sum(counts.values()),
            ", ".join("%s %d" % (word, count) for word, count in sorted(counts.items())) or "none",
        )
    )
    return EXIT_OK


def _drop_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final
    flush does not complain about the closed pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


class _UsageError(Exception):
    """A command line argparse would refuse (its message)."""


def _argument_parser(**settings: Any) -> "argparse.ArgumentParser":
    """An ArgumentParser whose errors come back to main() instead of being
    printed, so that they are written like every other line."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> "NoReturn":
            raise _UsageError(message)

    return Parser(formatter_class=argparse.RawDescriptionHelpFormatter, **settings)


def _parse(parser: "argparse.ArgumentParser", argv: List[str]) -> Union["argparse.Namespace", int]:
    """The parsed arguments, or the exit status of --help, --version or an error."""
    try:
        return parser.parse_args(argv)
    except _UsageError as exc:
        return _usage(parser, str(exc))
    except SystemExit as exc:  # --help or --version, already written
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _usage(parser: "argparse.ArgumentParser", text: str) -> int:
    console = _Console(False, False)
    for line in parser.format_usage().rstrip("\n").split("\n"):
        console.err_line(line)
    console.err("error: %s" % text)
    return EXIT_USAGE


def _cli_bar(args: Any) -> Optional[ProgressBar]:
    """The command line's display of one job, unless ``--quiet``."""
    if args.quiet:
        return None
    bar = ProgressBar()
    bar._watch.shows_errors = False  # the error line says it, once
    bar._wording = _cli_text  # its flags, not Python's parameters
    return bar


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
        text = _printable(_cli_text(record.getMessage()))
        if self._bar is None:
            self._console.err(text)
        elif self._bar.mode == "log":
            self._bar.note(text)  # the log line carries its own prefix
        else:
            self._bar.note("munsit-progress: " + text)


class _FollowHooks(_Hooks):
    """``munsit-progress DENOISE_ID``'s part in the pipeline: the job, and
    its URL on stdout before its result is saved."""

    def __init__(self, job: str, args: Any, console: _Console) -> None:
        self.known_id = job
        self._json = args.json
        self._console = console

    def output_for(self, done: DoneEvent) -> Optional[Tuple[str, str]]:
        self._console.result(done, self._json)
        return None

    def result_gone(self, error: APIError, job: str) -> APIError:
        return error  # named by the caller: not one found for a file


def _follow_id_command(
    args: Any,
    console: _Console,
    job: str,
    api_key: Optional[str],
    base_url: Optional[str],
    bar: Optional[ProgressBar],
) -> int:
    """``munsit-progress DENOISE_ID``: follow, print the URL, maybe save.
    The one-file pipeline, from a known job: one deadline, one session."""
    policy = RetryPolicy()
    watchers = [] if bar is None else [bar._watch]  # type: List[_Observer]
    if args.json:
        watchers.append(_JsonLines(console.record, done=False, error=True))
    target = None  # type: Optional[Tuple[str, str]]
    if args.output is not None:
        target = (args.output, _output_path(args.output))
    with _Call(
        api_key,
        base_url,
        None,
        deadline=_deadline(args.timeout, policy.clock),
        policy=policy,
        allow_http=args.allow_http,
    ) as client, _batch_folder_held(None if target is None else target[1]):
        try:
            _denoise_one(
                client,
                _NoFile(job),
                target,
                _Observers(*watchers),
                policy,
                _JobOptions(),
                _FollowHooks(job, args, console),
            )
        except DenoiseFailedError:
            raise  # its note says how to send the file again
        except MunsitError as exc:
            exc._job_noted = False  # the job is the one the command names
            raise
    return EXIT_OK


_KEY_FILE_LIMIT = 4096


def _cli_key(args: Any) -> str:
    """The API key from --api-key-file or the environment, or raise."""
    wait_at_most = _KEY_FILE_WAIT if args.timeout is None else min(args.timeout, _KEY_FILE_WAIT)
    api_key = _read_key(args.api_key_file, wait_at_most) or os.environ.get(_API_KEY_ENV) or ""
    if not api_key.strip():
        raise ConfigurationError("no API key: set %s or use --api-key-file PATH" % _API_KEY_ENV)
    return api_key


def _read_key(path: Optional[str], wait_at_most: float = 10.0) -> Optional[str]:
    """The first line of the key file, read without loading more than a few
    KB (``/dev/zero`` must not fill memory), a UTF-8 BOM dropped."""
    if path is None:
        return None
    try:
        if path == "-":
            line = _read_stdin_line(wait_at_most)
        else:
            line = _read_first_line(path, wait_at_most)
        if len(line) > _KEY_FILE_LIMIT:
            raise ConfigurationError(
                "the API key file's first line is longer than %d bytes" % _KEY_FILE_LIMIT
            )
        return line.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError("cannot read the API key file: %s" % exc) from exc


_KEY_FILE_WAIT = 10.0


def _read_first_line(path: str, wait_at_most: float) -> bytes:
    """The first line of a file, a FIFO (``--api-key-file <(pass show x)``)
    or a device, read without waiting more than a few seconds for it."""
    mode = os.stat(path).st_mode
    if _stat.S_ISREG(mode) or not hasattr(os, "O_NONBLOCK"):
        with open(path, "rb") as handle:
            return handle.readline(_KEY_FILE_LIMIT + 1)
    # Opened without blocking: a FIFO nobody writes to would block open().
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        return _read_line_within(fd, wait_at_most, "the API key file %s" % _printable(path))
    finally:
        os.close(fd)


def _read_stdin_line(wait_at_most: float) -> bytes:
    """The first line of standard input, waited for as a FIFO is when it is
    a pipe, a socket or a terminal: a cron job's stdin may be a pipe that
    nobody writes to and nobody closes."""
    stdin = getattr(sys.stdin, "buffer", None)
    if stdin is None:
        raise ConfigurationError("--api-key-file -: there is no standard input")
    try:
        fd = stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):  # a replaced sys.stdin may have no descriptor
        return cast(bytes, stdin.readline(_KEY_FILE_LIMIT + 1))
    waits = _stat.S_ISFIFO(mode) or _stat.S_ISSOCK(mode) or os.isatty(fd)
    # Windows (no O_NONBLOCK) selects only sockets; a file or /dev/null reads at once.
    if waits and hasattr(os, "O_NONBLOCK"):
        return _read_line_within(fd, wait_at_most, "standard input")
    return cast(bytes, stdin.readline(_KEY_FILE_LIMIT + 1))


def _read_line_within(fd: int, wait_at_most: float, shown: str) -> bytes:
    """The first line from a pipe, a FIFO, a socket or a terminal, given up
    on after ``wait_at_most`` seconds.  Read a byte at a time: a writer may
    send the line and keep the pipe open, and what follows stays unread."""
    import select

    deadline = time.monotonic() + wait_at_most
    line = bytearray()
    while len(line) <= _KEY_FILE_LIMIT and not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ConfigurationError(
                "%s from %s within %g seconds"
                % ("no end of line came" if line else "nothing came", shown, wait_at_most)
            )
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return bytes(line)


def _exit_status(exc: MunsitError) -> int:
    if isinstance(exc, DenoiseFailedError):
        return EXIT_JOB_FAILED
    if isinstance(exc, SubmissionUnknownError):
        return EXIT_UNSURE
    if isinstance(exc, BatchBusyError):
        return EXIT_BUSY
    if isinstance(exc, NotSubmittedError):
        return EXIT_GAVE_UP
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE
    if isinstance(exc, ProxyAuthenticationError):
        return EXIT_REJECTED
    if isinstance(exc, CertificateError):
        return EXIT_CERTIFICATE
    if isinstance(exc, (WaitTimeoutError, TransportError, SaveError)):
        return EXIT_GAVE_UP
    if isinstance(exc, APIError):
        return EXIT_GAVE_UP if RetryPolicy._retryable(exc) else EXIT_REJECTED
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
