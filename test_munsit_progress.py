"""Tests for munsit_progress, in the order of the module.

Everything that touches HTTP goes through a real server on 127.0.0.1 that
the tests start, written on stdlib sockets so that each test controls the
bytes, their chunking and their timing.  Every server loop is bounded in
count and in time and stops by itself.
"""

import atexit
import dataclasses
import gc
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuid_module
import zlib

import pytest
import requests
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import munsit_progress as mp
from munsit_progress import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    DenoiseFailedError,
    DoneEvent,
    ErrorEvent,
    JobNotFoundError,
    MunsitError,
    ProcessingEvent,
    ProtocolError,
    RetryPolicy,
    TransportError,
    WaitTimeoutError,
    iter_events,
    wait,
)

JOB = "5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1"
KEY = "test-key-5ecret-0123456789"
RESULT_URL = "https://cdn.munsit.com/denoising/user_123/5b1d2f7e_denoised.wav"
AUDIO = bytes(range(256)) * 2000  # 512 000 bytes
# Small reconnect delays, so that tests of many reconnections stay fast.
FAST = RetryPolicy(backoff_base=0.001, backoff_max=0.005)


# --------------------------------------------------------------------------
# The loopback server
# --------------------------------------------------------------------------


class Request:
    def __init__(self, method, path, version, headers, at, body_start=b""):
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers  # lower-cased names
        self.at = at
        self.body_start = body_start  # what came after the head in its read


class Server:
    """An HTTP server on 127.0.0.1 whose answers are scripts.

    Each incoming request is answered by the next script in ``scripts`` (the
    last one repeats).  A script is ``script(conn, request, server)`` and
    writes whatever bytes it likes.  ``client_closed`` is set when a script
    that holds a connection open sees the client hang up.
    """

    LIFETIME = 120.0
    MAX_CONNECTIONS = 5000

    def __init__(self, host="127.0.0.1", tls=None):
        self._tls = tls
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.origin = "%s://%s:%d" % ("https" if tls else "http", host, self.port)
        self.base_url = self.origin + "/api/v1"
        self.scripts = []
        self.requests = []
        self.client_closed = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def serve(self, *scripts):
        """Answer the next requests with ``scripts``, forgetting earlier ones."""
        with self._lock:
            self.scripts = list(scripts)
            self.requests = []
            self.client_closed.clear()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self):
        end = time.monotonic() + self.LIFETIME
        for _ in range(self.MAX_CONNECTIONS):
            while not self._stop.is_set() and time.monotonic() < end:
                try:
                    conn, _ = self._listener.accept()
                    break
                except socket.timeout:
                    continue
            else:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            conn.settimeout(5)
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                piece = conn.recv(4096)
                if not piece:
                    return
                head += piece
            head, _, body_start = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                request = Request(method, path, version, headers, time.monotonic(), body_start)
                self.requests.append(request)
                scripts = self.scripts
                script = scripts[min(len(self.requests), len(scripts)) - 1] if scripts else None
            if script is None:
                conn.sendall(b"HTTP/1.1 500 No script\r\nContent-Length: 0\r\n\r\n")
            else:
                script(conn, request, self)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


# A self-signed certificate for 127.0.0.1 (valid until 2126), for the TLS
# server: the tests trust it through REQUESTS_CA_BUNDLE.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUGdSEjP5gJXGPdjkBl95W/k2bFdgwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNjA3MTcwN1oYDzIxMjYxMTAy
MDcxNzA3WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAATOJb9R+oCKDazwPBQWMVUtQpqSwlm3V9KN3/oWzrsgFv7D+cg1NoCT
3x7efRPoSbQYD0c7rZ44U+/MkTtKYDMuo28wbTAdBgNVHQ4EFgQUIEdbW4MbqbEw
viuOFkoUby0klsMwHwYDVR0jBBgwFoAUIEdbW4MbqbEwviuOFkoUby0klsMwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSQAwRgIhAKnY7uJcF/39oTc3ihwb3QXDlbCf3b6kR5L2l2BZocDLAiEA
pIdnKSmLILKq0xa7eBq2s6Ick4RNGsck5f7Kn9C1KG8=
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgL8KlpMqPAPgYL4Tj
YSUrqEs7GPIAIBKWeQytGOHdfuWhRANCAATOJb9R+oCKDazwPBQWMVUtQpqSwlm3
V9KN3/oWzrsgFv7D+cg1NoCT3x7efRPoSbQYD0c7rZ44U+/MkTtKYDMu
-----END PRIVATE KEY-----
"""


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    import ssl

    (tmp_path / "cert.pem").write_text(TEST_CERT)
    (tmp_path / "key.pem").write_text(TEST_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "cert.pem"))
    srv = Server(tls=context)
    yield srv
    srv.close()


def hold(conn, server, seconds):
    """Keep the connection open, silent, until the client hangs up or time ends."""
    conn.settimeout(0.02)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = conn.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            server.client_closed.set()
            return


def reset(conn):
    """Close with a TCP RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()


def sse_data(payload):
    return ("data: %s\n\n" % json.dumps(payload, ensure_ascii=False)).encode("utf-8")


def processing(pct, message=None):
    payload = {"stage": "processing", "pct": pct}
    if message is not None:
        payload["message"] = message
    return sse_data(payload)


DONE = sse_data({"stage": "done", "url": RESULT_URL, "denoiseId": JOB})
FAILED = sse_data({"stage": "error", "message": "audio file is corrupt"})
EXPECTED_DONE = DoneEvent(RESULT_URL, JOB)


def head(status=200, headers=None, version="HTTP/1.1", reason="OK"):
    lines = ["%s %d %s" % (version, status, reason)]
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def stream(
    *parts,
    framing="chunked",
    delay=0.0,
    end="finish",
    hold_for=0.0,
    content_type="text/event-stream",
    extra_headers=None,
):
    """A script that sends ``parts`` as an SSE body in the given framing.

    framing: chunked, close (HTTP/1.1, no length), http10, length; gzip,
    deflate (zlib-wrapped) and rawdeflate (no wrapper, as some servers send
    "deflate"): chunked and compressed, flushed after every part.
    end: finish (a proper end of body), cut (close without ending a chunked
    body), reset (TCP RST).  ``hold_for`` keeps the connection open and
    silent before the end, watching for the client to hang up.
    """

    def script(conn, request, server):
        headers = {"Content-Type": content_type, "Cache-Control": "no-cache"}
        headers.update(extra_headers or {})
        version = "HTTP/1.1"
        body = b"".join(parts)
        compressed = framing in COMPRESSION
        if framing == "chunked" or compressed:
            headers["Transfer-Encoding"] = "chunked"
        elif framing == "close":
            headers["Connection"] = "close"
        elif framing == "http10":
            version = "HTTP/1.0"
        elif framing == "length":
            headers["Content-Length"] = str(len(body))
        if compressed:
            headers["Content-Encoding"], wbits = COMPRESSION[framing]
            compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        conn.sendall(head(200, headers, version))
        for index, part in enumerate(parts):
            if index and delay:
                time.sleep(delay)
            if compressed:
                part = compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH)
            if framing == "chunked" or compressed:
                part = b"%x\r\n%s\r\n" % (len(part), part) if part else b""
            conn.sendall(part)
        if hold_for:
            hold(conn, server, hold_for)
        if end == "reset":
            reset(conn)
        elif end == "finish" and (framing == "chunked" or compressed):
            tail = b""
            if compressed:
                tail = compressor.flush()
                tail = b"%x\r\n%s\r\n" % (len(tail), tail)
            conn.sendall(tail + b"0\r\n\r\n")

    return script


COMPRESSION = {"gzip": ("gzip", 31), "deflate": ("deflate", 15), "rawdeflate": ("deflate", -15)}


def raw_bytes(data, then_hold=0.0):
    """A script that sends ``data`` exactly as given, then closes."""

    def script(conn, request, server):
        conn.sendall(data)
        if then_hold:
            hold(conn, server, then_hold)

    return script


def error_response(status, body=b"", headers=None, reason="Error"):
    def script(conn, request, server):
        # This server closes every connection after one answer, and says so.
        all_headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        all_headers.update(headers or {})
        conn.sendall(head(status, all_headers, reason=reason) + body)

    return script


def assert_nothing_sent(server):
    time.sleep(0.2)  # long enough for the server thread to log a request
    assert server.requests == []


def events_of(server, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", server.base_url)
    return list(iter_events(JOB, **kwargs))


def wait_on(server, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", server.base_url)
    kwargs.setdefault("retry", FAST)
    return wait(JOB, **kwargs)


# --------------------------------------------------------------------------
# Events and exceptions
# --------------------------------------------------------------------------


def test_events_carry_their_wire_stage_and_are_frozen():
    event = ProcessingEvent(50, "half")
    assert (event.stage, DoneEvent("u", JOB).stage, ErrorEvent("m").stage) == (
        "processing",
        "done",
        "error",
    )
    with pytest.raises(AttributeError):
        event.pct = 60


def test_every_error_is_a_munsit_error_and_timeout_is_a_timeout_error():
    for cls in (
        ConfigurationError,
        APIError,
        AuthenticationError,
        JobNotFoundError,
        DenoiseFailedError,
        ProtocolError,
        TransportError,
        WaitTimeoutError,
    ):
        assert issubclass(cls, MunsitError)
    assert issubclass(WaitTimeoutError, TimeoutError)
    assert issubclass(AuthenticationError, APIError) and issubclass(JobNotFoundError, APIError)


# --------------------------------------------------------------------------
# SSE decoding (no HTTP)
# --------------------------------------------------------------------------


def parse(chunks):
    """Messages as (event type, data, last event id) from byte chunks."""
    splitter = mp._LineSplitter()
    decoder = mp._SSEDecoder()
    out = []
    for chunk in chunks:
        for message in decoder.feed(splitter.feed(chunk)):
            out.append(message)
    return out


def test_lf_crlf_and_cr_all_end_lines():
    assert parse([b"data: a\n\ndata: b\r\n\r\ndata: c\r\r"]) == [
        ("message", "a", ""),
        ("message", "b", ""),
        ("message", "c", ""),
    ]


def test_cr_at_chunk_end_and_lf_at_next_start_is_one_line_end():
    assert parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [("message", "a\nb", "")]


def test_leading_bom_is_dropped_even_when_split():
    assert parse([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [("message", "a", "")]


def test_only_one_leading_bom_is_dropped():
    assert parse([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n"]) == []


def test_comment_lines_are_ignored():
    assert parse([b": heartbeat\n:\ndata: a\n: more\n\n"]) == [("message", "a", "")]


def test_field_without_colon_has_empty_value():
    assert parse([b"data\ndata\n\n"]) == [("message", "\n", "")]


def test_only_one_space_after_colon_is_dropped():
    assert parse([b"data:a\n\ndata:  b\n\n"]) == [("message", "a", ""), ("message", " b", "")]


def test_data_lines_join_with_newline():
    assert parse([b"data: one\ndata: two\ndata: three\n\n"]) == [("message", "one\ntwo\nthree", "")]


def test_blank_line_without_data_dispatches_nothing():
    assert parse([b"\n\nevent: x\n\nid: 3\n\n"]) == []


def test_event_field_sets_type_and_resets_after_dispatch():
    assert parse([b"event: done\ndata: a\n\ndata: b\n\n"]) == [
        ("done", "a", ""),
        ("message", "b", ""),
    ]


def test_id_persists_and_id_with_nul_is_ignored():
    assert parse([b"id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\nid\ndata: d\n\n"]) == [
        ("message", "a", "7"),
        ("message", "b", "7"),
        ("message", "c", "7"),
        ("message", "d", ""),
    ]


def test_retry_accepts_ascii_digits_only():
    decoder = mp._SSEDecoder()
    for line, expected in [
        ("retry: 1500", 1500),
        ("retry: 15x", 1500),
        ("retry: -1", 1500),
        ("retry: \u0661\u0662", 1500),
        ("retry:", 1500),
        ("retry: 20", 20),
    ]:
        decoder.feed([line])
        assert decoder.retry == expected, line


def test_unknown_fields_are_ignored():
    assert parse([b"foo: bar\ndata: a\nData: b\n\n"]) == [("message", "a", "")]


def test_event_not_closed_by_blank_line_is_discarded():
    assert parse([b"data: a\n\ndata: b\n"]) == [("message", "a", "")]


def test_invalid_utf8_is_replaced_not_fatal():
    assert parse([b"data: \xff\xfeok\n\n"]) == [("message", "\ufffd\ufffdok", "")]


def test_multibyte_utf8_split_across_chunks():
    payload = "data: تقليل الضوضاء\n\n".encode()
    assert parse([payload[i : i + 1] for i in range(len(payload))]) == [
        ("message", "تقليل الضوضاء", "")
    ]


def test_line_over_the_cap_without_newline_fails_before_buffering_much():
    splitter = mp._LineSplitter(limit=1000)
    splitter.feed(b"data: " + b"x" * 900)
    with pytest.raises(ProtocolError):
        splitter.feed(b"x" * 200)


def test_line_over_the_cap_completed_within_one_read_fails():
    splitter = mp._LineSplitter(limit=1000)
    with pytest.raises(ProtocolError):
        splitter.feed(b"data: ok\n" + b"x" * 1500 + b"\r\ndata: ok\n")


def test_event_over_the_cap_in_many_lines_fails():
    decoder = mp._SSEDecoder(limit=1000)
    with pytest.raises(ProtocolError):
        for _ in range(100):
            decoder.feed(["data: " + "x" * 50])


# One model event: (event type or None, id or None, data lines, comment or None).
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"),
    max_size=12,
)
_model_event = st.tuples(
    st.one_of(st.none(), st.sampled_from(["done", "processing", "ping"])),
    st.one_of(st.none(), st.text(alphabet="0123456789abc", max_size=4)),
    st.lists(_text, min_size=0, max_size=3),
    st.one_of(st.none(), _text),
)


@st.composite
def _streams(draw):
    events = draw(st.lists(_model_event, max_size=6))
    lines = []
    expected = []
    last_id = ""
    for event_type, event_id, data_lines, comment in events:
        if comment is not None:
            lines.append(":" + comment)
        if event_type is not None:
            lines.append("event: " + event_type)
        if event_id is not None:
            lines.append("id: " + event_id)
            last_id = event_id
        for data in data_lines:
            lines.append("data: " + data)
        lines.append("")
        if data_lines:
            expected.append((event_type or "message", "\n".join(data_lines), last_id))
    body = ""
    previous = None
    for line in lines:
        endings = ["\n", "\r\n", "\r"]
        if previous == "\r" and line == "":
            # CR then an empty line ended by LF would read as one CRLF.
            endings = ["\r\n", "\r"]
        previous = draw(st.sampled_from(endings))
        body += line + previous
    data = body.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data, expected


@settings(max_examples=300, deadline=None)
@given(_streams(), st.data())
def test_any_stream_split_anywhere_parses_the_same(sample, data):
    body, expected = sample
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    assert parse(chunks) == expected
    assert parse([body[i : i + 1] for i in range(len(body))]) == expected


# --------------------------------------------------------------------------
# Event validation (through the server)
# --------------------------------------------------------------------------


def test_iter_events_yields_processing_then_done(server):
    server.serve(stream(processing(15, "Extracting audio"), processing(62), DONE))
    assert events_of(server) == [
        ProcessingEvent(15, "Extracting audio"),
        ProcessingEvent(62, None),
        EXPECTED_DONE,
    ]


def test_request_has_key_accept_cache_control_and_canonical_path(server):
    server.serve(stream(DONE))
    list(iter_events(JOB.upper(), api_key=KEY, base_url=server.base_url + "/"))
    (request,) = server.requests
    assert request.method == "GET"
    assert request.path == "/api/v1/denoise/%s/progress" % JOB
    assert request.headers["x-api-key"] == KEY
    assert request.headers["accept"] == "text/event-stream"
    assert request.headers["cache-control"] == "no-cache"
    assert "last-event-id" not in request.headers


def test_key_and_base_url_come_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("MUNSIT_API_KEY", KEY + "\n")
    monkeypatch.setenv("MUNSIT_BASE_URL", server.base_url)
    server.serve(stream(DONE))
    assert list(iter_events(JOB)) == [EXPECTED_DONE]
    assert server.requests[0].headers["x-api-key"] == KEY


def test_iter_events_yields_the_error_event_as_data(server):
    server.serve(stream(processing(10), FAILED))
    assert events_of(server) == [ProcessingEvent(10), ErrorEvent("audio file is corrupt")]


@pytest.mark.parametrize("pct", [0, 100, 42.5, 1e-9])
def test_pct_edges_are_accepted(server, pct):
    server.serve(stream(processing(pct), DONE))
    assert events_of(server)[0] == ProcessingEvent(pct)


@pytest.mark.parametrize(
    "pct_json", ["-0.5", "100.01", "true", '"50"', "null", "NaN", "Infinity", "1e400", "[1]"]
)
def test_invalid_pct_is_a_protocol_error(server, pct_json):
    server.serve(stream(b'data: {"stage":"processing","pct":%s}\n\n' % pct_json.encode()))
    with pytest.raises(ProtocolError, match="pct"):
        events_of(server)


@pytest.mark.parametrize(
    "payload",
    [
        {"stage": "processing", "pct": 5, "message": 7},
        {"stage": "done", "denoiseId": JOB},
        {"stage": "done", "url": RESULT_URL},
        {"stage": "done", "url": RESULT_URL, "denoiseId": "11111111-2222-3333-4444-555555555555"},
        {"stage": "error"},
        ["stage", "done"],
    ],
)
def test_wrong_fields_on_a_known_stage_are_protocol_errors(server, payload):
    server.serve(stream(sse_data(payload)))
    with pytest.raises(ProtocolError):
        events_of(server)


def test_absurdly_nested_json_is_a_protocol_error(server):
    server.serve(stream(b"data: " + b"[" * 100000 + b"\n\n"))
    with pytest.raises(ProtocolError):
        events_of(server)


def test_bad_json_under_a_stage_event_name_is_a_protocol_error(server):
    server.serve(stream(b"event: done\ndata: {oops\n\n", DONE))
    with pytest.raises(ProtocolError):
        events_of(server)


def test_malformed_json_is_a_protocol_error(server):
    server.serve(stream(b"data: {not json\n\n", DONE))
    with pytest.raises(ProtocolError, match="not JSON"):
        events_of(server)


def test_unknown_stage_is_skipped_with_a_warning(server, caplog):
    server.serve(stream(sse_data({"stage": "queued", "position": 3}), DONE))
    with caplog.at_level(logging.WARNING, logger="munsit_progress"):
        assert events_of(server) == [EXPECTED_DONE]
    assert "queued" in caplog.text


def test_unknown_extra_fields_are_ignored(server):
    payload = {"stage": "processing", "pct": 3, "eta": 12, "message": "m", "x": {"y": 1}}
    server.serve(stream(sse_data(payload), DONE))
    assert events_of(server)[0] == ProcessingEvent(3, "m")


def test_heartbeats_comments_and_empty_data_yield_nothing(server):
    server.serve(stream(b": ping\n\n", b"data:\n\n", b"data:   \n\n", b"\n", DONE))
    assert events_of(server) == [EXPECTED_DONE]


def test_event_type_names_the_stage_when_the_payload_does_not(server):
    body = b"event: ping\ndata: keepalive\n\nevent: done\ndata: %s\n\n" % json.dumps(
        {"url": RESULT_URL, "denoiseId": JOB}
    ).encode("ascii")
    server.serve(stream(body))
    assert events_of(server) == [EXPECTED_DONE]


def test_arabic_message_is_utf8_without_a_charset(server):
    server.serve(stream(processing(40, "جارٍ تقليل الضوضاء"), DONE))
    assert events_of(server)[0].message == "جارٍ تقليل الضوضاء"


# --------------------------------------------------------------------------
# Framing, promptness and stream ends
# --------------------------------------------------------------------------

FRAMINGS = ["chunked", "close", "http10", "length", "gzip", "deflate", "rawdeflate"]


@pytest.mark.parametrize("framing", FRAMINGS)
def test_events_arrive_whole_in_every_framing(server, framing):
    server.serve(stream(processing(1, "a"), processing(50, "ب"), DONE, framing=framing, delay=0.01))
    assert events_of(server) == [ProcessingEvent(1, "a"), ProcessingEvent(50, "ب"), EXPECTED_DONE]


@pytest.mark.parametrize("framing", ["chunked", "close", "http10", "gzip", "deflate"])
def test_event_is_delivered_while_the_server_holds_the_connection(server, framing):
    # One short event, then silence: a client that waits for a full buffer
    # (requests' iter_lines waits for 512 bytes) would sit here for 3 s.
    server.serve(stream(processing(7), framing=framing, hold_for=3.0, end="cut"))
    start = time.monotonic()
    events = iter_events(JOB, api_key=KEY, base_url=server.base_url)
    try:
        assert next(events) == ProcessingEvent(7)
        assert time.monotonic() - start < 1.0
    finally:
        events.close()


@pytest.mark.parametrize("end", ["cut", "reset"])
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_stream_ending_before_a_terminal_event_is_a_transport_error(server, framing, end):
    server.serve(stream(processing(5), framing=framing, end=end))
    with pytest.raises(TransportError):
        events_of(server)


def test_truncated_chunk_is_a_transport_error(server):
    body = head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
    server.serve(raw_bytes(body + b"40\r\n" + processing(5)[:20]))
    with pytest.raises(TransportError):
        events_of(server)


def test_short_content_length_body_is_a_transport_error(server):
    body = head(200, {"Content-Type": "text/event-stream", "Content-Length": "500"})
    server.serve(raw_bytes(body + processing(5)))
    with pytest.raises(TransportError):
        events_of(server)


def test_silent_connection_past_read_timeout_is_a_transport_error(server):
    server.serve(stream(processing(5), hold_for=5.0, end="cut"))
    start = time.monotonic()
    with pytest.raises(TransportError, match="stalled"):
        events_of(server, read_timeout=0.3)
    assert time.monotonic() - start < 2.0


def test_connection_refused_is_a_transport_error_with_its_cause():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(TransportError) as info:
        list(iter_events(JOB, api_key=KEY, base_url="http://127.0.0.1:%d" % port))
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)


def test_line_over_one_mib_is_a_protocol_error(server):
    server.serve(stream(b"data: " + b"x" * (mp.MAX_LINE_BYTES + 10), hold_for=3.0, end="cut"))
    with pytest.raises(ProtocolError, match="longer"):
        events_of(server)


def test_event_over_one_mib_in_many_lines_is_a_protocol_error(server):
    server.serve(stream(*[b"data: " + b"x" * 1000 + b"\n"] * 1100))
    with pytest.raises(ProtocolError, match="longer"):
        events_of(server)


def test_gzip_read_that_inflates_past_one_buffer_is_delivered_whole(server):
    many = b"".join(processing(n % 100, "m" * 40) for n in range(5000))
    server.serve(stream(many, DONE, framing="gzip"))
    events = events_of(server)
    assert len(events) == 5001 and events[-1] == EXPECTED_DONE


def test_gzip_body_with_corrupt_bytes_is_a_protocol_error(server):
    body = head(
        200,
        {"Content-Type": "text/event-stream", "Content-Encoding": "gzip", "Connection": "close"},
    )
    server.serve(raw_bytes(body + gzip.compress(DONE)[:10] + b"garbage-garbage"))
    with pytest.raises((ProtocolError, TransportError)):
        events_of(server)


# --------------------------------------------------------------------------
# HTTP errors
# --------------------------------------------------------------------------


def test_wrong_content_type_is_a_protocol_error_naming_it(server):
    server.serve(stream(b"<html>proxy login</html>", content_type="text/html; charset=utf-8"))
    with pytest.raises(ProtocolError, match="text/html"):
        wait_on(server)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_authentication_errors_never_retried(server, status):
    body = b'{"errorCode":"40101","errorMessage":"Invalid or missing API key"}'
    server.serve(error_response(status, body))
    with pytest.raises(AuthenticationError) as info:
        wait_on(server)
    assert info.value.status_code == status
    assert info.value.error_code == "40101"
    assert info.value.error_message == "Invalid or missing API key"
    assert len(server.requests) == 1


def test_404_is_job_not_found_never_retried(server):
    server.serve(error_response(404, b'{"message":"Denoising job not found"}'))
    with pytest.raises(JobNotFoundError) as info:
        wait_on(server)
    assert info.value.error_message == "Denoising job not found"
    assert "Denoising job not found" in str(info.value)
    assert len(server.requests) == 1


def test_other_4xx_is_an_api_error_not_retried(server):
    server.serve(error_response(400, b"not json at all"))
    with pytest.raises(APIError) as info:
        wait_on(server)
    assert type(info.value) is APIError and info.value.status_code == 400
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_retried_then_succeed(server, status):
    server.serve(error_response(status), error_response(status), stream(DONE))
    assert wait_on(server) == EXPECTED_DONE
    assert len(server.requests) == 3


def test_5xx_every_time_gives_up_after_max_retries_with_the_last_error(server):
    server.serve(error_response(503, b'{"message":"down"}'))
    with pytest.raises(APIError) as info:
        wait_on(server, retry=RetryPolicy(max_retries=2, backoff_base=0.001))
    assert info.value.status_code == 503 and info.value.error_message == "down"
    assert len(server.requests) == 3


def test_iter_events_does_not_retry(server):
    server.serve(error_response(503), stream(DONE))
    with pytest.raises(APIError):
        events_of(server)
    assert len(server.requests) == 1


def test_retry_after_is_honoured(server):
    server.serve(error_response(429, headers={"Retry-After": "1"}), stream(DONE))
    assert wait_on(server) == EXPECTED_DONE
    first, second = server.requests
    assert 0.9 <= second.at - first.at < 3.0


def test_retry_after_as_an_http_date():
    from email.utils import formatdate

    assert 1.0 <= mp._parse_retry_after(formatdate(time.time() + 3, usegmt=True)) <= 3.5
    assert mp._parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert mp._parse_retry_after("soon") is None


def test_retry_after_longer_than_allowed_raises_at_once(server):
    server.serve(error_response(503, headers={"Retry-After": "7200"}), stream(DONE))
    start = time.monotonic()
    with pytest.raises(APIError):
        wait_on(server)
    assert time.monotonic() - start < 1.0
    assert len(server.requests) == 1


# --------------------------------------------------------------------------
# A hostile server: only MunsitError leaves, and nothing hangs
# --------------------------------------------------------------------------


def test_retry_field_of_thousands_of_digits_is_capped_not_an_error(server):
    server.serve(stream(b"retry: " + b"9" * 5000 + b"\n\n", processing(10), DONE))
    assert events_of(server)[-1] == EXPECTED_DONE


def test_retry_field_of_hundreds_of_digits_then_a_drop_reconnects(server):
    server.serve(stream(b"retry: " + b"9" * 400 + b"\n\n", processing(10), end="cut"), stream(DONE))
    assert wait_on(server, retry=RetryPolicy(backoff_max=0.01)) == EXPECTED_DONE


@pytest.mark.parametrize(
    "value", ["\u00b2", "1\u00b2", "Mon, 01 Jan 99999999999 00:00:00 GMT", "9" * 400]
)
def test_hostile_retry_after_values_are_ignored_or_capped(server, value):
    server.serve(error_response(503, headers={"Retry-After": value}), stream(DONE))
    try:
        assert wait_on(server, retry=RetryPolicy(backoff_max=0.01, max_retry_after=1)) == (
            EXPECTED_DONE
        )
    except APIError as exc:  # a delay past max_retry_after raises the 503 itself
        assert exc.status_code == 503


@pytest.mark.parametrize("follow", ["wait", "iter_events"])
def test_error_body_nested_beyond_recursion_is_an_api_error(server, follow):
    server.serve(error_response(400, b"[" * 60000))
    with pytest.raises(APIError) as info:
        wait_on(server) if follow == "wait" else events_of(server)
    assert info.value.status_code == 400


def continues_forever(interval, lines, limit=15.0):
    """A script that sends ``lines`` (a list of bytes) one every ``interval``
    seconds, again and again, until the client hangs up or ``limit`` ends."""

    def script(conn, request, server):
        end = time.monotonic() + limit
        index = 0
        conn.settimeout(interval)
        while time.monotonic() < end:
            try:
                conn.sendall(lines[index % len(lines)])
            except OSError:
                server.client_closed.set()
                return
            index += 1
            try:
                if conn.recv(1) == b"":
                    server.client_closed.set()
                    return
            except socket.timeout:
                pass

    return script


ENDLESS_CONTINUE = continues_forever(0.1, [b"HTTP/1.1 100 Continue\r\n\r\n"])


def test_deadline_bounds_endless_100_continue_lines(server):
    server.serve(ENDLESS_CONTINUE)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=2, read_timeout=1)
    assert time.monotonic() - started < 4
    assert server.client_closed.wait(2)


def test_read_timeout_bounds_endless_100_continue_lines_without_a_deadline(server):
    server.serve(ENDLESS_CONTINUE)
    started = time.monotonic()
    with pytest.raises(TransportError, match="no complete answer"):
        events_of(server, read_timeout=1, connect_timeout=1)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("which", ["server", "tls_server"])
def test_deadline_bounds_headers_trickled_a_byte_at_a_time(request, which):
    server = request.getfixturevalue(which)
    header = list(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Slow: " + b"a" * 500)
    server.serve(continues_forever(0.5, [bytes([byte]) for byte in header]))
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=2)
    assert time.monotonic() - started < 4
    assert len(server.requests) == 1


def test_wait_keeps_constant_memory_however_many_distinct_events(server):
    import tracemalloc

    big = "x" * 900_000
    events = [processing(50, "%d %s" % (index, big)) for index in range(40)] + [DONE]

    def script(conn, request, server):  # no copy of the body on the server's side
        conn.sendall(head(200, {"Content-Type": "text/event-stream", "Connection": "close"}))
        for event in events:
            conn.sendall(event)

    server.serve(script)
    tracemalloc.start()
    try:
        assert wait_on(server) == EXPECTED_DONE
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 40 messages of 0.9 MB kept would be 36 MB; one at a time is a few.
    assert peak < 15_000_000


def test_gzip_body_of_several_members_is_read_whole(server):
    first = gzip.compress(processing(10) + processing(20))
    second = gzip.compress(processing(30) + DONE)
    body = first + second

    def script(conn, request, server):
        headers = {
            "Content-Type": "text/event-stream",
            "Content-Encoding": "gzip",
            "Content-Length": str(len(body)),
        }
        conn.sendall(head(200, headers) + body)

    server.serve(script)
    assert [getattr(e, "pct", None) for e in events_of(server)] == [10, 20, 30, None]


def test_unknown_stages_are_logged_once_per_kind_not_per_event(server, caplog):
    kinds = [sse_data({"stage": "weird-%d" % (index % 3), "n": index}) for index in range(3000)]
    many = [sse_data({"stage": "kind-%d" % index}) for index in range(50)]
    server.serve(stream(b"".join(kinds), b"".join(many), DONE))
    with caplog.at_level(logging.WARNING, logger="munsit_progress"):
        assert events_of(server)[-1] == EXPECTED_DONE
    warnings = [r for r in caplog.records if r.name == "munsit_progress"]
    assert 3 <= len(warnings) <= mp._MAX_WARNED_STAGES + 1
    assert "no longer logged" in warnings[-1].getMessage()


# One hostile answer: a status line, header lines and a body, all random.
_status_lines = st.one_of(
    st.binary(max_size=60),
    st.builds(
        lambda code, reason: b"HTTP/1.1 %d %s" % (code, reason),
        st.one_of(st.sampled_from([200, 206, 302, 400, 401, 404, 429, 503]), st.integers(0, 999)),
        st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
    ),
)
_header_lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from(
            [
                b"Content-Type: text/event-stream",
                b"Content-Type: application/json",
                b"Transfer-Encoding: chunked",
                b"Content-Encoding: gzip",
                b"Content-Encoding: deflate",
                b"Content-Encoding: br",
                b"Content-Length: 10",
                b"Content-Length: \xc2\xb2",
                b"Content-Length: -1",
                b"Content-Range: bytes 0-1/2",
                b"Location: http://[::1",
                b"Location: /api/v1/denoise/%s/progress" % JOB.encode(),
                b"Retry-After: \xd9\xa3",
                b"Retry-After: \xb2",
                b"Content-Length: \xb2",
                b"Retry-After: Mon, 01 Jan 99999999999 00:00:00 GMT",
                b'ETag: "x"',
            ]
        ),
        st.builds(
            lambda name, value: name + b": " + value, st.binary(max_size=12), st.binary(max_size=40)
        ),
    ),
    max_size=6,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"[" * 5000, b'{"errorMessage": "' + b"\xff" * 10 + b'"}']),
    st.lists(
        st.sampled_from(
            [
                processing(10),
                DONE,
                FAILED,
                b"retry: " + b"9" * 300 + b"\n",
                b'data: {"stage": "done"}\n\n',
                b"data: " + b"[" * 3000 + b"\n\n",
                b"id: \x00\n",
                b"\r",
                b"\xff\xfe",
                b'data: {"stage": "processing", "pct": 1e999}\n\n',
                b"5\r\nshort\r\n",
            ]
        ),
        max_size=6,
    ).map(b"".join),
)


def hostile(status_line, header_lines, body):
    answer = (
        status_line + b"\r\n" + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n" + body
    )

    def script(conn, request, server):
        conn.sendall(answer)

    return script


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(status_line=_status_lines, header_lines=_header_lines, body=_bodies)
def test_any_answer_gives_events_or_a_munsit_error_and_never_hangs(
    server, status_line, header_lines, body
):
    server.serve(hostile(status_line, header_lines, body))
    started = time.monotonic()
    try:
        for event in iter_events(
            JOB, api_key=KEY, base_url=server.base_url, read_timeout=1, connect_timeout=1
        ):
            assert isinstance(event, (ProcessingEvent, DoneEvent, ErrorEvent))
    except MunsitError:
        pass
    try:
        wait_on(server, timeout=3, retry=RetryPolicy(max_retries=1, backoff_max=0.01))
    except MunsitError:
        pass
    assert time.monotonic() - started < 8


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(status_line=_status_lines, header_lines=_header_lines, body=_bodies)
def test_any_answer_to_a_download_gives_a_file_or_a_munsit_error(
    server, tmp_path_factory, status_line, header_lines, body
):
    folder = tmp_path_factory.mktemp("fuzz")
    server.serve(hostile(status_line, header_lines, body))
    started = time.monotonic()
    try:
        mp.download(
            result_on(server),
            str(folder / "x.wav"),
            api_key=KEY,
            base_url=server.base_url,
            timeout=3,
            read_timeout=1,
            retry=RetryPolicy(max_retries=1, backoff_max=0.01),
        )
    except MunsitError:
        assert os.listdir(str(folder)) == []
    assert time.monotonic() - started < 8


# --------------------------------------------------------------------------
# wait(): reconnection, resumption, deadline
# --------------------------------------------------------------------------


def test_wait_reports_progress_and_returns_done(server):
    server.serve(stream(processing(10, "a"), processing(90, "b"), DONE))
    seen = []
    assert wait_on(server, on_progress=seen.append) == EXPECTED_DONE
    assert seen == [ProcessingEvent(10, "a"), ProcessingEvent(90, "b")]


def test_wait_raises_denoise_failed_on_an_error_event(server):
    server.serve(stream(processing(10), FAILED))
    with pytest.raises(DenoiseFailedError) as info:
        wait_on(server)
    assert info.value.message == "audio file is corrupt"
    assert len(server.requests) == 1


SHORT_STREAM = b"".join([b": hi\n\n", processing(20, "a"), processing(80, "ب"), DONE])


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_wait_survives_a_drop_at_every_byte_offset(server, framing):
    # Each offset: the first connection is cut after `offset` body bytes,
    # the second delivers the whole stream; the result must not change.
    for offset in range(len(SHORT_STREAM)):
        cut = stream(SHORT_STREAM[:offset], framing=framing, end="cut")
        server.serve(cut, stream(SHORT_STREAM, framing=framing))
        seen = []
        assert wait_on(server, on_progress=seen.append) == EXPECTED_DONE, offset
        assert len(server.requests) == 2, offset
        assert seen[-2:] == [ProcessingEvent(20, "a"), ProcessingEvent(80, "ب")], offset


def test_wait_survives_a_reset(server):
    server.serve(stream(processing(20), end="reset"), stream(DONE))
    assert wait_on(server) == EXPECTED_DONE
    assert len(server.requests) == 2


def test_wait_reconnects_after_a_stall(server):
    server.serve(stream(processing(20), hold_for=5.0, end="cut"), stream(DONE))
    start = time.monotonic()
    assert wait_on(server, read_timeout=0.3) == EXPECTED_DONE
    assert len(server.requests) == 2
    assert time.monotonic() - start < 3.0


def test_drops_without_events_give_up_after_max_retries(server):
    server.serve(stream(b": nothing\n\n", end="cut"))
    with pytest.raises(TransportError):
        wait_on(server, retry=RetryPolicy(max_retries=3, backoff_base=0.001))
    assert len(server.requests) == 4


def test_a_connection_that_delivers_events_resets_the_failure_count(server):
    drops = [stream(processing(n), end="cut") for n in range(6)]
    server.serve(*(drops + [stream(DONE)]))
    assert wait_on(server, retry=RetryPolicy(max_retries=1, backoff_base=0.001)) == EXPECTED_DONE
    assert len(server.requests) == 7


def test_replayed_progress_does_not_reset_the_failure_count(server):
    server.serve(stream(processing(40, "same"), end="cut"))
    with pytest.raises(TransportError):
        wait_on(server, retry=RetryPolicy(max_retries=3, backoff_base=0.001))
    # The first connection brought news, the three retries only a replay.
    assert len(server.requests) == 4


def test_retry_field_sets_the_reconnect_delay(server):
    slow = RetryPolicy(backoff_base=30.0, jitter=False)
    server.serve(stream(b"retry: 200\n\n", processing(5), end="cut"), stream(DONE))
    assert wait_on(server, retry=slow, timeout=10) == EXPECTED_DONE
    first, second = server.requests
    assert 0.15 <= second.at - first.at < 2.0


def test_last_event_id_is_sent_on_reconnect(server):
    server.serve(stream(b"id: 41\n" + processing(5), b"id: 42\ndata:\n\n", end="cut"), stream(DONE))
    assert wait_on(server) == EXPECTED_DONE
    first, second = server.requests
    assert "last-event-id" not in first.headers
    assert second.headers["last-event-id"] == "42"


@pytest.mark.parametrize(
    "id_line, header",
    [
        (b"id: 43\n\n", "43"),  # an id on a message without data still counts
        ("id: \u0628-7\n\n".encode("utf-8"), "\u0628-7"),
        (b"id:  42\n\n", "42"),
    ],
)
def test_last_event_id_header_variants(server, id_line, header):
    server.serve(stream(processing(5), id_line, end="cut"), stream(DONE))
    assert wait_on(server) == EXPECTED_DONE
    sent = server.requests[1].headers["last-event-id"]
    assert sent.encode("latin-1").decode("utf-8") == header


def test_deadline_bounds_a_silent_stream(server):
    server.serve(stream(processing(5), hold_for=10.0, end="cut"))
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=0.5, read_timeout=60)
    assert 0.45 <= time.monotonic() - start < 1.5


def test_deadline_bounds_a_stream_of_heartbeats(server):
    server.serve(stream(*[b": tick\n\n"] * 100, delay=0.05))
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=0.5)
    assert 0.45 <= time.monotonic() - start < 1.5


def test_deadline_bounds_each_read_by_the_time_left(server):
    # The second event comes at 1.0 s, then silence: a read bounded only by
    # read_timeout (2.5 s) would end at 3.5 s, past the 2.0 s deadline.
    server.serve(stream(processing(1), processing(2), delay=1.0, hold_for=10.0, end="cut"))
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=2.0, read_timeout=2.5)
    assert 1.9 <= time.monotonic() - start < 3.0


def test_deadline_bounds_a_server_that_never_answers(server):
    def silent(conn, request, server):
        hold(conn, server, 10.0)

    server.serve(silent)
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=0.5, read_timeout=60, connect_timeout=60)
    assert time.monotonic() - start < 1.5


def test_deadline_bounds_a_server_that_trickles_bytes(server):
    # Leading zeros of a chunk size, one every 50 ms: every receive returns
    # quickly, so only a watch on the whole read keeps the deadline.
    def trickle(conn, request, server):
        conn.sendall(
            head(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        )
        for _ in range(100):
            conn.sendall(b"0")
            time.sleep(0.05)

    server.serve(trickle)
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=0.5)
    assert time.monotonic() - start < 1.5


def test_deadline_is_not_overslept_in_backoff(server):
    server.serve(error_response(503), stream(DONE))
    start = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=1.0, retry=RetryPolicy(backoff_base=10.0, jitter=False))
    assert time.monotonic() - start < 0.9
    assert len(server.requests) == 1


def test_deadline_raises_before_any_request_when_already_past(server):
    server.serve(stream(DONE))
    with pytest.raises(WaitTimeoutError):
        wait_on(server, timeout=0)
    assert_nothing_sent(server)


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
def test_a_timeout_that_is_not_a_duration_is_a_configuration_error(server, timeout):
    server.serve(stream(DONE))
    with pytest.raises(ConfigurationError):
        wait_on(server, timeout=timeout)
    assert_nothing_sent(server)


def test_an_infinite_timeout_means_no_deadline(server):
    server.serve(stream(DONE))
    assert wait_on(server, timeout=float("inf")) == EXPECTED_DONE


def test_retry_policy_delay_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0, jitter=False)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(3, retry_after=7.0) == 7.0
    assert policy.delay(1, server_retry=0.25) == 0.25
    jittered = RetryPolicy(backoff_base=1.0, backoff_max=5.0)
    assert all(0 <= jittered.delay(3) <= 4.0 for _ in range(200))


def test_full_jitter_spreads_over_the_whole_range():
    delays = [RetryPolicy(backoff_base=1.0, backoff_max=5.0).delay(3) for _ in range(500)]
    assert min(delays) < 0.4 and max(delays) > 3.6


def test_server_retry_is_capped_and_then_backs_off():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0, jitter=False)
    assert policy.delay(1, server_retry=86400.0) == 30.0
    assert policy.delay(1, server_retry=0.0) == 0.0
    assert policy.delay(2, server_retry=0.0) == 2.0
    assert RetryPolicy(max_retries=5000).delay(1100) <= 30.0


def test_clock_and_sleep_of_the_policy_are_used(server):
    sleeps = []
    policy = RetryPolicy(backoff_base=2.0, jitter=False, sleep=sleeps.append)
    server.serve(error_response(500), error_response(500), stream(DONE))
    assert wait_on(server, retry=policy) == EXPECTED_DONE
    assert sleeps == [2.0, 4.0]


# Deadlines and retries on a fake clock: no socket (a session that answers
# from a script), no sleep (the policy's sleep moves the clock).


class FakeClock:
    """A clock that moves only when slept on, or when a scripted request
    takes its time."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def fake_policy(clock, **kwargs):
    kwargs.setdefault("backoff_base", 1.0)
    kwargs.setdefault("backoff_max", 100.0)
    return RetryPolicy(jitter=False, clock=clock, sleep=clock.sleep, **kwargs)


class ScriptEnded(BaseException):
    """More requests than scripted: not an error the module would retry."""


class ScriptedSession(requests.Session):
    """A session that answers each request from ``script`` (status, headers,
    body), never opening a socket; each request takes ``cost`` seconds of
    the fake clock.  A request body is read whole, as a connection would."""

    def __init__(self, clock, script, cost=0.0):
        super().__init__()
        self.trust_env = False  # no proxy from the environment
        self.clock = clock
        self.script = list(script)
        self.cost = cost
        self.requests = []  # (clock reading, method, url, headers)

    def request(self, method, url, headers=None, data=None, **kwargs):
        self.requests.append((self.clock.now, method, url, dict(headers or {})))
        if data is not None:
            while data.read(1 << 20):
                pass
        self.clock.now += self.cost
        if not self.script:
            raise ScriptEnded("request %d was not scripted" % len(self.requests))
        status, answer_headers, body = self.script.pop(0)
        response = requests.Response()
        response.status_code = status
        response.reason = "Scripted"
        response.headers = requests.structures.CaseInsensitiveDict(answer_headers)
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(body),
            headers=answer_headers,
            status=status,
            preload_content=False,
            decode_content=False,
        )
        response.url = url
        return response


SCRIPTED_URL = "https://munsit.test/api/v1"
UNAVAILABLE = (503, {"Content-Type": "application/json"}, b'{"message": "busy"}')
NO_JOBS = (200, {"Content-Type": "application/json"}, b"[]")


def throttled(seconds):
    return (429, {"Retry-After": str(seconds)}, b"")


def scripted_list(clock, script, **kwargs):
    """list_jobs() through a ScriptedSession, kept as scripted_list.session."""
    session = ScriptedSession(clock, script, kwargs.pop("cost", 0.0))
    scripted_list.session = session
    kwargs.setdefault("retry", fake_policy(clock))
    return mp.list_jobs(api_key=KEY, base_url=SCRIPTED_URL, session=session, **kwargs)


def test_fake_clock_max_retries_failures_then_the_last_error():
    clock = FakeClock()
    with pytest.raises(APIError) as info:
        scripted_list(clock, [UNAVAILABLE] * 5, retry=fake_policy(clock, max_retries=3))
    assert info.value.status_code == 503
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert len(scripted_list.session.requests) == 4


def test_fake_clock_retries_until_an_answer_within_the_count():
    clock = FakeClock()
    jobs = scripted_list(clock, [UNAVAILABLE, UNAVAILABLE, NO_JOBS])
    assert jobs == [] and clock.sleeps == [1.0, 2.0]


def test_fake_clock_the_deadline_passing_between_retries_ends_the_call():
    # Each request takes 1.5 s: the first fails at 1.5, the pause of 1 s
    # fits before the deadline at 3, the second answer comes at 4.0, past it.
    clock = FakeClock()
    start = clock.now
    with pytest.raises(WaitTimeoutError, match="while waiting for the answer"):
        scripted_list(clock, [UNAVAILABLE, UNAVAILABLE], timeout=3.0, cost=1.5)
    assert [at - start for at, *_ in scripted_list.session.requests] == [0.0, 2.5]
    assert clock.sleeps == [1.0]


def test_fake_clock_a_pause_that_would_pass_the_deadline_is_not_slept():
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError, match="would pass before the next attempt") as info:
        scripted_list(clock, [UNAVAILABLE] * 3, timeout=2.5)
    assert clock.sleeps == [1.0]  # the second pause, 2 s, would end at 3
    assert isinstance(info.value.__cause__, APIError)


def test_fake_clock_retry_after_longer_than_the_deadline_gives_up_at_once():
    clock = FakeClock()
    with pytest.raises(WaitTimeoutError):
        scripted_list(clock, [throttled(30), NO_JOBS], timeout=20.0)
    assert clock.sleeps == [] and len(scripted_list.session.requests) == 1


def test_fake_clock_retry_after_is_obeyed_within_the_deadline_and_the_policy():
    clock = FakeClock()
    assert scripted_list(clock, [throttled(30), NO_JOBS], timeout=40.0) == []
    assert clock.sleeps == [30.0]
    # Longer than the policy waits: the 429 itself, at once.
    clock = FakeClock()
    with pytest.raises(APIError) as info:
        scripted_list(clock, [throttled(30)], retry=fake_policy(clock, max_retry_after=10))
    assert info.value.status_code == 429 and clock.sleeps == []


def sse_answer(*events):
    return (200, {"Content-Type": "text/event-stream"}, b"".join(events))


def scripted_wait(clock, script, **kwargs):
    """wait() through a ScriptedSession, kept as scripted_wait.session."""
    session = ScriptedSession(clock, script)
    scripted_wait.session = session
    kwargs.setdefault("retry", fake_policy(clock))
    return wait(JOB, api_key=KEY, base_url=SCRIPTED_URL, session=session, **kwargs)


def test_fake_clock_a_connection_that_advanced_resets_the_failure_count():
    # max_retries=1, and four drops in a row: each connection brought news,
    # so each pause is the first one's.
    clock = FakeClock()
    script = [sse_answer(processing(pct)) for pct in (10, 20, 30, 40)] + [sse_answer(DONE)]
    done = scripted_wait(clock, script, retry=fake_policy(clock, max_retries=1))
    assert done == EXPECTED_DONE and clock.sleeps == [1.0] * 4
    # The same drops replaying one event: the count grows, and ends it.
    clock = FakeClock()
    script = [sse_answer(processing(10))] * 4 + [sse_answer(DONE)]
    with pytest.raises(TransportError):
        scripted_wait(clock, script, retry=fake_policy(clock, max_retries=1))
    assert clock.sleeps == [1.0] and len(scripted_wait.session.requests) == 2


def test_fake_clock_a_download_that_got_further_resets_the_failure_count(tmp_path):
    # A 90-byte result that comes 30 bytes per connection: two drops, each
    # past the furthest byte reached, under max_retries=1.
    clock = FakeClock()
    data = bytes(range(90))
    headers = {"ETag": '"v1"', "Content-Length": "90"}
    script = [(200, headers, data[:30])]
    for start in (30, 60):
        end = start + 30
        script.append(
            (
                206,
                {"ETag": '"v1"', "Content-Range": "bytes %d-89/90" % start},
                data[start:end],
            )
        )
    session = ScriptedSession(clock, script)
    target = str(tmp_path / "out.wav")
    mp.download(
        EXPECTED_DONE,
        target,
        api_key=KEY,
        base_url=SCRIPTED_URL,
        session=session,
        retry=fake_policy(clock, max_retries=1),
    )
    with open(target, "rb") as saved:
        assert saved.read() == data
    assert clock.sleeps == [1.0, 1.0]
    assert [r[3].get("Range") for r in session.requests] == [None, "bytes=30-", "bytes=60-"]


def test_fake_clock_a_throttled_upload_gives_the_lock_back_during_the_pause(tmp_path):
    clock = FakeClock()
    held = []
    events = []

    class Lock:
        def __init__(self, key):
            pass

        def __enter__(self):
            held.append(True)
            events.append(("take", clock.now))

        def __exit__(self, *exc_info):
            held.pop()
            events.append(("give", clock.now))

    def sleep(seconds):
        assert not held, "slept with the lock held"
        clock.sleep(seconds)

    (tmp_path / "a.wav").write_bytes(b"clip" * 50)
    answer = json.dumps({"denoiseId": JOB, "jobId": "j-1"}).encode()
    # The look before each attempt (an empty account), the 429, the look
    # again, the upload taken.
    script = [NO_JOBS, throttled(7), NO_JOBS, (200, {}, answer), NO_JOBS]
    session = ScriptedSession(clock, script)
    policy = dataclasses.replace(fake_policy(clock), sleep=sleep)
    job = mp.submit(
        str(tmp_path / "a.wav"),
        api_key=KEY,
        base_url=SCRIPTED_URL,
        session=session,
        check=False,
        lock=Lock,
        retry=policy,
    )
    assert job.denoise_id == JOB and clock.sleeps == [7.0]
    start = session.requests[0][0]
    assert [(what, at - start) for what, at in events] == [
        ("take", 0.0),
        ("give", 0.0),
        ("take", 7.0),
        ("give", 7.0),
    ]
    assert [method for _, method, _, _ in session.requests] == ["GET", "POST", "GET", "POST", "GET"]


def test_fake_clock_the_batch_gate_pauses_uploads_on_the_policy_clock():
    clock = FakeClock()
    policy = fake_policy(clock)
    gate = mp._Gate()
    gate.learn(APIError(429, retry_after=10.0), policy)
    late = mp._Call(KEY, SCRIPTED_URL, None, deadline=clock.now + 5.0, policy=policy)
    with pytest.raises(WaitTimeoutError, match="uploads are paused"):
        gate.wait_turn(late, policy)
    assert clock.sleeps == []
    client = mp._Call(KEY, SCRIPTED_URL, None, deadline=clock.now + 60.0, policy=policy)
    gate.wait_turn(client, policy)
    assert sum(clock.sleeps) == 10.0 and max(clock.sleeps) <= 1.0
    late.close()
    client.close()


# --------------------------------------------------------------------------
# Security and configuration
# --------------------------------------------------------------------------


def test_redirect_to_another_origin_is_not_followed_and_the_key_stays(server):
    other = Server(host="127.0.0.1")
    try:
        other.serve(stream(DONE))
        target = "http://localhost:%d/api/v1/denoise/%s/progress" % (other.port, JOB)
        server.serve(error_response(302, headers={"Location": target}))
        with pytest.raises(APIError, match="another origin"):
            wait_on(server)
        assert other.requests == []
        assert len(server.requests) == 1
    finally:
        other.close()


@pytest.mark.parametrize(
    "location",
    [
        "http://localhost:{port}/api/v1/denoise/%s/progress" % JOB,  # host only
        "http://127.0.0.1:{other}/api/v1/denoise/%s/progress" % JOB,  # port only
        "https://127.0.0.1:{port}/api/v1/denoise/%s/progress" % JOB,  # scheme only
    ],
)
def test_redirect_changing_any_part_of_the_origin_is_refused(server, location):
    server.serve(
        error_response(302, headers={"Location": location.format(port=server.port, other=1)}),
        stream(DONE),
    )
    with pytest.raises(APIError, match="another origin"):
        wait_on(server)
    time.sleep(0.2)
    assert len(server.requests) == 1


def test_redirect_to_a_malformed_url_is_a_protocol_error(server):
    server.serve(error_response(302, headers={"Location": "http://127.0.0.1:99999/x"}))
    with pytest.raises(ProtocolError):
        wait_on(server)


def test_redirect_within_the_same_origin_is_followed(server):
    server.serve(
        error_response(307, headers={"Location": "/api/v2/denoise/%s/progress" % JOB}),
        stream(DONE),
    )
    assert events_of(server) == [EXPECTED_DONE]
    assert server.requests[1].path == "/api/v2/denoise/%s/progress" % JOB
    assert server.requests[1].headers["x-api-key"] == KEY


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "../../admin", JOB + "/../x", None, 42])
def test_non_uuid_ids_raise_before_any_request(server, bad_id):
    server.serve(stream(DONE))
    with pytest.raises(ConfigurationError):
        iter_events(bad_id, api_key=KEY, base_url=server.base_url)
    with pytest.raises(ConfigurationError):
        wait(bad_id, api_key=KEY, base_url=server.base_url)
    assert_nothing_sent(server)


def test_missing_key_raises_before_any_request(server, monkeypatch):
    monkeypatch.delenv("MUNSIT_API_KEY", raising=False)
    server.serve(stream(DONE))
    with pytest.raises(ConfigurationError, match="MUNSIT_API_KEY"):
        wait(JOB, base_url=server.base_url)
    with pytest.raises(ConfigurationError):
        iter_events(JOB, api_key="  ", base_url=server.base_url)
    assert_nothing_sent(server)


def test_key_with_control_characters_is_refused_without_showing_it(server):
    with pytest.raises(ConfigurationError) as info:
        wait(JOB, api_key="abc\ndef", base_url=server.base_url)
    assert "abc" not in str(info.value)
    assert_nothing_sent(server)


@pytest.mark.parametrize(
    "base_url",
    ["ftp://example.com", "example.com/api", "http://", "http://h:abc/api", "http://h:99999"],
)
def test_malformed_base_url_is_a_configuration_error(base_url):
    with pytest.raises(ConfigurationError):
        iter_events(JOB, api_key=KEY, base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:/api/v1",
        "http://user:pw@127.0.0.1:/api/v1",
        "http://[::1]:/api/v1",
        "http://127.0.0.1:0/api/v1",
        "http://127.0.0.1:abc/api/v1",
        "http://127.0.0.1:65536/api/v1",
    ],
)
def test_a_base_url_with_an_empty_or_malformed_port_is_refused_at_once(base_url):
    # Before: an empty port (or 0) went to port 80 and was retried to the end.
    with pytest.raises(ConfigurationError, match="port|http"):
        mp.list_jobs(api_key=KEY, base_url=base_url, timeout=5)
    started = time.monotonic()
    result = run_cli("list", "--base-url", base_url, "--timeout", "5")
    assert result.returncode == mp.EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr and "pw" not in result.stderr
    assert time.monotonic() - started < 5


def test_a_base_url_s_port_when_well_formed_is_taken(server):
    server.serve(FakeAPI("ok"))
    assert mp.list_jobs(api_key=KEY, base_url=server.base_url.replace("://", "://u:p@")) == []


def test_key_never_appears_in_errors_or_logs(server, caplog):
    server.serve(
        stream(processing(5), end="cut"),
        error_response(500),
        error_response(401, b'{"errorCode":"40101","errorMessage":"bad key"}'),
    )
    with caplog.at_level(logging.DEBUG, logger="munsit_progress"):
        with pytest.raises(AuthenticationError) as info:
            wait_on(server)
    assert "reconnecting" in caplog.text
    for text in (caplog.text, str(info.value), repr(info.value)):
        assert KEY not in text
    assert KEY not in repr(mp._Call(KEY, server.base_url, None))


def echo_key(status, where):
    """A server that echoes the key it was sent back in ``where``."""

    def script(conn, request, server):
        key = request.headers.get("x-api-key", "")
        if where == "body":
            body = json.dumps({"errorCode": "40101", "errorMessage": "bad key " + key}).encode()
            conn.sendall(
                head(status, {"Content-Length": str(len(body)), "Connection": "close"}) + body
            )
        elif where == "reason":
            conn.sendall(head(status, {"Content-Length": "0"}, reason="key " + key))
        elif where == "content-type":
            conn.sendall(head(200, {"Content-Type": "text/html; k=" + key, "Content-Length": "0"}))
        elif where == "event":
            stream(sse_data({"stage": "error", "message": "no credit for " + key}))(
                conn, request, server
            )
        elif where == "json":
            stream(("data: {bad json %s\n\n" % key).encode())(conn, request, server)

    return script


@pytest.mark.parametrize(
    "where, status",
    [("body", 401), ("reason", 401), ("content-type", 200), ("event", 200), ("json", 200)],
)
def test_a_key_the_server_echoes_is_redacted_from_errors(server, where, status):
    server.serve(echo_key(status, where))
    with pytest.raises(MunsitError) as info:
        wait_on(server)
    error = info.value
    texts = [
        str(error),
        repr(error),
        str(getattr(error, "error_message", "")),
        str(getattr(error, "message", "")),
    ]
    assert all(KEY not in text for text in texts), texts
    assert "***" in " ".join(texts)


def test_a_key_the_server_echoes_is_redacted_from_the_cli(server):
    server.serve(echo_key(401, "body"))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 3
    assert KEY not in result.stderr and "***" in result.stderr


def test_a_password_in_the_base_url_is_redacted_from_debug_logs(server, caplog):
    server.serve(stream(DONE))
    base_url = "http://admin:hunter2secret@127.0.0.1:%d/api/v1" % server.port
    with caplog.at_level(logging.DEBUG, logger="munsit_progress"):
        wait(JOB, api_key=KEY, base_url=base_url, retry=FAST)
    assert "hunter2secret" not in caplog.text and "admin:***@" in caplog.text


def test_the_exception_keeps_no_key_within_reach(server):
    server.serve(lambda conn, request, server: reset(conn))  # no answer at all
    with pytest.raises(TransportError) as info:
        events_of(server)
    reachable = []
    error = info.value
    while error is not None:
        reachable.append(error)
        for holder in (error, getattr(error, "response", None)):
            request = getattr(holder, "request", None)
            if request is not None:
                reachable.append(dict(request.headers))
        error = error.__cause__ or error.__context__
    assert len(reachable) > 2  # the cause and its request are there
    assert all(KEY not in repr(item) for item in reachable)


def test_a_key_echoed_in_an_event_name_is_redacted_from_debug_logs(server, caplog):
    server.serve(stream(("event: echo-%s\ndata: not json\n\n" % KEY).encode(), DONE))
    with caplog.at_level(logging.DEBUG, logger="munsit_progress"):
        wait_on(server)
    assert "non-JSON" in caplog.text and KEY not in caplog.text


# A key JSON escapes (a quote, a backslash), long enough that a 200-character
# cut of a message can fall inside it.
ODD_KEY = 'Qz"9\\Kx/' + "-odd-key-0123456789abcdef" * 6


def echo_odd_key(where):
    """A server whose 200 answer holds ODD_KEY (JSON-escaped but in "raw")
    where a cut of its text at 200 characters falls inside the key."""
    pad = "x" * 170
    body = {
        "upload": json.dumps({"pad": pad, "echo": ODD_KEY}),
        "raw": "<html>" + pad + ODD_KEY,
        "list": json.dumps({"pad": pad, "echo": ODD_KEY}),
        "record": json.dumps([{"pad": pad, "echo": ODD_KEY}]),
    }[where].encode()

    def script(conn, request, server):
        read_body(conn, request, keep=False)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        conn.sendall(head(200, dict(headers, Connection="close")) + body)

    return script


@pytest.mark.parametrize("where", ["upload", "raw", "list", "record", "event", "error"])
def test_a_key_echoed_json_escaped_across_the_cut_leaves_no_part_of_it(
    server, where, audio_file, caplog
):
    if where == "event":
        server.serve(stream(sse_data(["x" * 170, ODD_KEY])))
    elif where == "error":
        text = "x" * 170 + ODD_KEY
        server.serve(error_response(400, json.dumps({"errorMessage": text}).encode()))
    else:
        server.serve(echo_odd_key(where))
    settings = {"api_key": ODD_KEY, "base_url": server.base_url, "retry": QUICK}
    with caplog.at_level(logging.DEBUG, logger="munsit_progress"):
        with pytest.raises(MunsitError) as info:
            if where in ("upload", "raw"):
                mp.submit(audio_file, **settings)
            elif where in ("list", "record"):
                mp.list_jobs(**settings)
            else:
                wait(JOB, **settings)
    texts = [caplog.text]
    error = info.value
    while error is not None:
        texts += [str(error), repr(error), str(getattr(error, "message", ""))]
        error = error.__cause__ or error.__context__
    for form in (ODD_KEY, json.dumps(ODD_KEY)[1:-1]):
        assert all(form[:8] not in text for text in texts), (form[:8], texts)
    assert "***" in str(info.value), str(info.value)


def test_a_non_ascii_secret_is_redacted_however_json_escapes_it():
    secret = "mot-de-passe-\u00e9t\u00e9-\u043a\u043b\u044e\u0447"
    mp._remember_secret(secret)
    for ascii_only in (True, False):
        text = json.dumps({"password": secret}, ensure_ascii=ascii_only)
        assert mp._redact(text) == '{"password": "***"}'


def test_c1_controls_in_a_redirect_reach_no_log(server, caplog):
    # U+009B (CSI) as UTF-8 bytes; http.client reads headers as Latin-1.
    location = b"/api/v1/denoise/" + JOB.encode() + b"/progress?\xc2\x9b2J\xc2\x9b31mFORGED"
    redirect = b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
    server.serve(raw_bytes(redirect), stream(DONE))
    with caplog.at_level(logging.DEBUG, logger="munsit_progress"):
        try:
            wait_on(server)
        except ProtocolError:
            pass
    assert "\x9b" not in caplog.text and "FORGED" not in caplog.text


def test_line_separators_and_bidi_overrides_cannot_forge_log_lines():
    out = Utf8Stream()
    bar = mp.ProgressBar(out, mode="log")
    bar(
        ProcessingEvent(
            50, "working\u20282026-11-26 00:00:00 munsit: done: http://evil/x \u202eexe.wav"
        )
    )
    text = out.getvalue()
    assert "\u2028" not in text and "\u202e" not in text
    assert len(text.splitlines()) == 1


def test_a_206_that_changed_version_is_not_spliced(server, tmp_path):
    old, new = b"A" * 1000, b"B" * 1000

    def first(conn, request, srv):
        conn.sendall(head(200, {"ETag": '"v1"', "Content-Length": "1000"}) + old[:400])

    def ignores_if_range(conn, request, srv):
        headers = {"ETag": '"v2"', "Content-Range": "bytes 400-999/1000", "Content-Length": "600"}
        conn.sendall(head(206, headers, reason="Partial Content") + new[400:])

    server.serve(first, ignores_if_range, file_response(new, headers={"ETag": '"v2"'}))
    target = tmp_path / "x.wav"
    try:
        mp.download(
            result_on(server), str(target), base_url=server.base_url, retry=FAST, timeout=10
        )
    except MunsitError:
        pass
    assert not target.exists() or target.read_bytes() in (old, new)


@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "deflate"])
def test_transfer_codings_other_than_chunked_are_refused(server, tmp_path, coding):
    body = gzip.compress(AUDIO)
    server.serve(raw_bytes(head(200, {"Transfer-Encoding": coding, "Connection": "close"}) + body))
    with pytest.raises(ProtocolError, match="Transfer-Encoding"):
        mp.download(result_on(server), str(tmp_path / "x.wav"), base_url=server.base_url)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("name", ["a\x00b.wav", "\ud800.wav", "folder-to-be/"])
def test_output_names_that_cannot_be_files_are_configuration_errors(tmp_path, name):
    with pytest.raises(ConfigurationError):
        mp.download(DoneEvent(RESULT_URL, JOB), str(tmp_path) + os.sep + name)


@pytest.mark.parametrize("kwargs", [{"api_key": b"bytes-key-123"}, {"base_url": b"http://x"}])
def test_keys_and_base_urls_that_are_not_str_are_configuration_errors(kwargs):
    kwargs.setdefault("api_key", KEY)
    with pytest.raises(ConfigurationError):
        list(iter_events(JOB, **kwargs))


def test_a_progress_bar_without_any_stderr_is_silent(server, monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)
    server.serve(stream(processing(10), DONE))
    assert wait_on(server, on_progress=mp.ProgressBar()) == EXPECTED_DONE


def test_ascii_log_replaces_what_it_cannot_encode_with_a_question_mark(server):
    server.serve(stream(processing(40, "تقليل"), DONE))
    result = run_cli(JOB, "--base-url", server.base_url, env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0
    assert "?????" in result.stderr and "\\u" not in result.stderr


# --------------------------------------------------------------------------
# The connection is closed on every exit path
# --------------------------------------------------------------------------


def test_connection_closed_right_after_the_terminal_event(server):
    server.serve(stream(DONE, hold_for=5.0, end="cut"))
    events = iter_events(JOB, api_key=KEY, base_url=server.base_url)
    assert next(events) == EXPECTED_DONE
    # The generator is still alive and has not been asked for more.
    assert server.client_closed.wait(2.0)
    events.close()


def test_connection_closed_on_a_protocol_error(server):
    server.serve(stream(b"data: {oops\n\n", hold_for=5.0, end="cut"))
    with pytest.raises(ProtocolError):
        events_of(server)
    assert server.client_closed.wait(2.0)


def test_connection_closed_when_the_consumer_stops_early(server):
    server.serve(stream(processing(5), hold_for=5.0, end="cut"))
    for _event in iter_events(JOB, api_key=KEY, base_url=server.base_url):
        break
    assert server.client_closed.wait(2.0)


def test_connection_closed_when_the_generator_is_garbage_collected(server):
    server.serve(stream(processing(5), hold_for=5.0, end="cut"))
    events = iter_events(JOB, api_key=KEY, base_url=server.base_url)
    next(events)
    del events
    gc.collect()
    assert server.client_closed.wait(2.0)


def test_connection_closed_when_the_callback_raises(server):
    server.serve(stream(processing(5), hold_for=5.0, end="cut"))

    def explode(event):
        raise RuntimeError("callback failed")

    # Keeping the traceback (as a notebook does) keeps the frames alive: the
    # connection must be closed explicitly, not by reference counting.
    with pytest.raises(RuntimeError) as info:
        wait_on(server, on_progress=explode)
    assert server.client_closed.wait(2.0)
    assert info.value.args == ("callback failed",)


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_ctrl_c_during_a_blocking_read_closes_the_connection(server):
    server.serve(stream(processing(5), hold_for=5.0, end="cut"))
    main = threading.main_thread().ident
    timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
    # SIGINT may be inherited as ignored (nohup, `cmd &`): make it Ctrl-C's.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            wait_on(server, timeout=10)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 2.0
    assert server.client_closed.wait(2.0)


def test_errors_survive_pickling():
    import pickle

    for error in (
        APIError(503, "E1", "down", 2.0),
        AuthenticationError(401, "40101", "bad key"),
        JobNotFoundError(404, None, "gone"),
        DenoiseFailedError("corrupt"),
        TransportError("reset"),
        mp.ProxyError("cannot reach the proxy http://proxy:3128", "http://proxy:3128"),
        mp.ProxyAuthenticationError("refused", "http://proxy:3128"),
        mp.CertificateError("cannot verify"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy)) == (type(error), str(error))
        assert vars(copy) == vars(error)


def test_a_session_the_library_made_is_closed(server, monkeypatch):
    closed = []

    class TrackedSession(requests.Session):
        def close(self):
            closed.append(self)
            super().close()

    monkeypatch.setattr(requests, "Session", TrackedSession)
    server.serve(stream(DONE))
    wait_on(server)
    list(iter_events(JOB, api_key=KEY, base_url=server.base_url))
    assert len(closed) == 2


def test_a_given_session_is_reused_and_left_open(server):
    class CountingSession(requests.Session):
        sent = 0
        closed = 0

        def send(self, request, **kwargs):
            CountingSession.sent += 1
            return super().send(request, **kwargs)

        def close(self):
            CountingSession.closed += 1
            super().close()

    session = CountingSession()
    server.serve(stream(processing(5), end="cut"), stream(DONE))
    assert wait_on(server, session=session) == EXPECTED_DONE
    assert (CountingSession.sent, CountingSession.closed) == (2, 0)
    session.close()


# --------------------------------------------------------------------------
# Upload and list: submit(), list_jobs() (a stateful fake API)
# --------------------------------------------------------------------------


def read_body(conn, request, limit=60.0, keep=True):
    """The request's body (Content-Length bytes), or how many bytes it had
    when ``keep`` is false."""
    length = int(request.headers.get("content-length", "0"))
    body = [request.body_start]
    got = len(request.body_start)
    end = time.monotonic() + limit
    conn.settimeout(5)
    while got < length and time.monotonic() < end:
        piece = conn.recv(1 << 20)
        if not piece:
            break
        got += len(piece)
        if keep:
            body.append(piece)
    return b"".join(body) if keep else got


def form_parts(content_type, body):
    """The parts of a multipart/form-data body, read by the standard
    library's email parser: an independent reading of what was sent."""
    import email.parser
    import email.policy

    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    assert message.is_multipart()
    return message.get_payload()


# The content tag submit() puts before a name's extension (a stable format).
TAG = re.compile(r"^munsit-[0-9a-f]{20}\.")


def untagged(name):
    """A name as sent, without its content tag."""
    return TAG.sub("", name) if name else name


def tagged(name, path):
    """The name a file at ``path`` is sent under."""
    return mp._tagged_name(name, mp.content_tag(path))


def iso_now(offset=0.0):
    now = time.time() + offset
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (
        int(now * 1000) % 1000
    )


class _StatusSniffer:
    """A connection that tells the fake API how a job's stream ended, so that
    its list shows the job as success or failed, as the real API does."""

    def __init__(self, conn, api, job):
        self._conn, self._api, self._job = conn, api, job

    def sendall(self, data):
        for stage, status in ((b'"stage": "done"', "success"), (b'"stage": "error"', "failed")):
            if stage in data:
                self._api.set_status(self._job, status)
        return self._conn.sendall(data)

    def __getattr__(self, name):
        return getattr(self._conn, name)


class FakeAPI:
    """A Munsit API with state, as one script for the loopback server.

    Each POST is parsed with the email package and answered as ``answers``
    says, in turn (the last repeats): "ok" takes the job and answers; "drop"
    takes it and resets the connection; "502"/"504"/"500" take it and answer
    that; "429"/"503" take nothing; "untaken-502" takes nothing and answers
    502; "midway" resets while the body is still coming; "hang" takes it and
    says nothing; "late" takes it, resets, and lists it only a moment later;
    "400"/"401"/"402"/"403" refuse.  GET /denoise lists the jobs taken,
    newest first; their progress streams end in done; their results serve
    ``result``."""

    def __init__(
        self,
        *answers,
        result=AUDIO,
        progress=None,
        echo=False,
        by_name=None,
        stored_name=None,
        clock_offset=0.0,
    ):
        self.stored_name = stored_name or (lambda name: name)  # how it keeps file names
        self.clock_offset = clock_offset  # its records' clock minus its Date header's
        self.answers = list(answers) or ["ok"]
        self.result = result
        self.progress = progress
        self.echo = echo  # serve each job's upload back as its result
        self.by_name = by_name or {}  # file name -> progress script of its job
        self.jobs = []  # newest last
        self.posts = []  # (request, parts or None)
        self.content = {}  # job id -> uploaded bytes
        self.events = []  # (event, file name), in order
        self.pause_at = None  # (event, nth): hold there until released
        self.hit = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()

    def event(self, name, file_name):
        """Note an event; at the armed one, wait (bounded) to be released."""
        with self.lock:
            self.events.append((name, file_name))
            count = sum(1 for event, _ in self.events if event == name)
            armed = self.pause_at == (name, count)
        if armed:
            self.hit.set()
            self.release.wait(15)

    def set_status(self, job, status):
        with self.lock:
            for record in self.jobs:
                if record["id"] == job:
                    record["status"] = status

    def name_of(self, job):
        with self.lock:
            for record in self.jobs:
                if record["id"] == job:
                    return untagged(record["file_name"])
        return None

    def posts_by_name(self):
        counts = {}
        for post in self.posts:
            if post[1] is not None:
                name = untagged(post[1][0].get_filename())
                counts[name] = counts.get(name, 0) + 1
        return counts

    def __call__(self, conn, request, server):
        path = request.path.split("?")[0]
        if request.method == "POST":
            self.post(conn, request, server)
        elif path == "/api/v1/denoise":
            self.list(conn, request)
        elif path.endswith("/progress"):
            job = path.split("/")[-2]
            name = self.name_of(job)
            self.event("progress", name)
            done = sse_data(
                {"stage": "done", "url": server.origin + "/files/%s.wav" % job, "denoiseId": job}
            )
            script = (
                self.by_name.get(name) or self.progress or stream(processing(50, "working"), done)
            )
            script(_StatusSniffer(conn, self, job), request, server)
        elif path.startswith("/files/"):
            job = path.split("/")[-1].split(".")[0]
            body = self.content.get(job, self.result) if self.echo else self.result
            if self.pause_at is not None and self.pause_at[0] == "download-half":
                half = len(body) // 2
                headers = {"Content-Length": str(len(body)), "Connection": "close"}
                conn.sendall(head(200, headers) + body[:half])
                self.event("download-half", self.name_of(job))
                conn.sendall(body[half:])
            else:
                file_response(body)(conn, request, server)
        else:
            conn.sendall(head(404, {"Content-Length": "0", "Connection": "close"}))

    def answer(self):
        with self.lock:
            return self.answers[min(len(self.posts), len(self.answers) - 1)]

    def post(self, conn, request, server):
        answer = self.answer()
        self.event("post-head", None)
        if answer == "midway":
            conn.recv(1000)
            with self.lock:
                self.posts.append((request, None))
            reset(conn)
            return
        body = read_body(conn, request)
        if len(body) < int(request.headers.get("content-length", "0")):
            # The client went away mid-upload: no closing boundary, no job.
            with self.lock:
                self.posts.append((request, None))
            return
        parts = form_parts(request.headers["content-type"], body)
        with self.lock:
            self.posts.append((request, parts, len(body)))
        if answer in ("429", "503", "untaken-502"):
            status = 502 if answer == "untaken-502" else int(answer)
            error_response(status, headers={"Retry-After": "0"})(conn, request, server)
            return
        if answer in ("400", "401", "402", "403"):
            payload = {"errorCode": "4%s01" % answer[1:], "errorMessage": "refused (%s)" % answer}
            error_response(int(answer), json.dumps(payload).encode())(conn, request, server)
            return
        job = self.take(parts, delay=0.3 if answer == "late" else 0.0)
        self.event("post-taken", untagged(parts[0].get_filename()))
        if answer == "ok":
            body = json.dumps({"jobId": job, "denoiseId": job}).encode()
            conn.sendall(
                head(
                    200,
                    {
                        "Content-Type": "application/json",
                        "Content-Length": str(len(body)),
                        "Connection": "close",
                    },
                )
                + body
            )
            self.event("post-answered", untagged(parts[0].get_filename()))
        elif answer in ("drop", "late"):
            reset(conn)
        elif answer in ("500", "502", "504"):
            error_response(int(answer))(conn, request, server)
        elif answer == "hang":
            hold(conn, server, 20)

    def take(self, parts, delay=0.0):
        part = parts[0]
        job = str(uuid_module.uuid4())
        self.content[job] = part.get_payload(decode=True)
        with self.lock:
            self.jobs.append(
                {
                    "id": job,
                    "status": "pending",
                    "file_name": self.stored_name(part.get_filename()),
                    "audio_size": len(part.get_payload(decode=True)),
                    "created_at": iso_now(self.clock_offset),
                    "visible_at": time.monotonic() + delay,
                    "extra_field": {"ignored": True},
                }
            )
        return job

    def list(self, conn, request):
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(request.path).query)
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query["limit"][0]) if "limit" in query else None
        now = time.monotonic()
        with self.lock:
            shown = [
                {k: v for k, v in job.items() if k != "visible_at"}
                for job in reversed(self.jobs)
                if job["visible_at"] <= now
            ][offset:]
        shown = shown[:limit] if limit is not None else shown
        body = json.dumps(shown).encode()
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        conn.sendall(
            head(
                200,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Connection": "close",
                    "Date": date,
                },
            )
            + body
        )

    def uploaded(self, index=-1):
        """The file bytes of the index-th POST, as the parser read them."""
        return self.posts[index][1][0].get_payload(decode=True)


# The lookup's pause and Retry-After, shortened for the tests.
QUICK = RetryPolicy(backoff_base=0.001, backoff_max=0.005, sleep=lambda s: time.sleep(min(s, 0.4)))


@pytest.fixture
def audio_file(tmp_path):
    path = tmp_path / "interview.wav"
    path.write_bytes(mp._demo_wav())
    return str(path)


def submit_to(server, path, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", server.base_url)
    kwargs.setdefault("retry", QUICK)
    return mp.submit(path, **kwargs)


@pytest.mark.parametrize(
    "name",
    [
        "plain.wav",
        "ملف صوتي.wav",
        "日本語 🎧.flac",
        "semi;colon=x.ogg",
    ],
)
def test_upload_is_one_audio_part_that_a_multipart_parser_reads_back_intact(server, tmp_path, name):
    content = os.urandom(70000)
    (tmp_path / name).write_bytes(content)
    api = FakeAPI("ok")
    server.serve(api)
    job = submit_to(server, str(tmp_path / name), check=False)
    request, parts, length = api.posts[0]
    assert len(parts) == 1
    part = parts[0]
    assert part.get_param("name", header="content-disposition") == "audio"
    assert part.get_filename() == tagged(name, str(tmp_path / name))
    assert part.get_payload(decode=True) == content
    assert request.headers["content-length"] == str(length)
    assert "transfer-encoding" not in request.headers
    assert job.file_name == part.get_filename() and job.size == len(content)
    assert job.denoise_id == api.jobs[0]["id"] == job.job_id


def test_a_line_end_in_a_file_name_is_sent_as_browsers_send_it(server, tmp_path):
    (tmp_path / "two\nlines.wav").write_bytes(b"RIFF....")
    api = FakeAPI("ok")
    server.serve(api)
    submit_to(server, str(tmp_path / "two\nlines.wav"), check=False, tag=False)
    assert api.posts[0][1][0].get_filename() == "two%0Alines.wav"


@pytest.mark.parametrize(
    "name, written",
    [
        ('my "best" take.wav', "my %22best%22 take.wav"),
        ("two\r\nlines.wav", "two%0D%0Alines.wav"),
        ("back\\slash.mp3", "back\\slash.mp3"),
        ("tab\tand\x7f.wav", "tab%09and%7F.wav"),
        ("ملف.wav", "ملف.wav"),
    ],
)
def test_the_file_name_is_written_in_the_form_as_browsers_write_it(server, tmp_path, name, written):
    # The WHATWG multipart/form-data encoding: no backslash escapes, which
    # fetch's formData() (undici) refuses.
    (tmp_path / name).write_bytes(b"RIFF....")
    bodies = []

    def take(conn, request, srv):
        bodies.append(read_body(conn, request))
        body = json.dumps({"jobId": JOB, "denoiseId": JOB}).encode()
        conn.sendall(head(200, {"Content-Length": str(len(body)), "Connection": "close"}) + body)

    server.serve(take)
    submit_to(server, str(tmp_path / name), check=False, tag=False)
    expected = b'; filename="%s"\r\n' % written.encode("utf-8")
    assert expected in bodies[0], bodies[0][:300]


def test_the_part_has_the_content_type_of_its_extension(server, tmp_path):
    api = FakeAPI("ok")
    server.serve(api)
    for name, expected in [
        ("a.mp3", "audio/mpeg"),
        ("b.mkv", "video/x-matroska"),
        ("c.xyz", "application/octet-stream"),
    ]:
        (tmp_path / name).write_bytes(name.encode())
        submit_to(server, str(tmp_path / name), check=False)
        assert api.posts[-1][1][0].get_content_type() == expected


def test_submit_takes_an_open_binary_file(server, audio_file):
    api = FakeAPI("ok")
    server.serve(api)
    with open(audio_file, "rb") as handle:
        job = submit_to(server, handle)
    assert untagged(job.file_name) == "interview.wav"
    assert api.uploaded() == open(audio_file, "rb").read()


def test_upload_progress_goes_to_on_upload_and_to_a_progress_bar(server, tmp_path):
    (tmp_path / "big.wav").write_bytes(os.urandom(3_000_000))
    server.serve(FakeAPI("ok"))
    seen = []
    submit_to(
        server,
        str(tmp_path / "big.wav"),
        on_upload=lambda sent, total: seen.append((sent, total)),
        check=False,
    )
    assert seen[-1] == (3_000_000, 3_000_000) and len(seen) >= 3
    assert [sent for sent, _ in seen] == sorted(sent for sent, _ in seen)
    out = Utf8Stream()
    submit_to(
        server,
        str(tmp_path / "big.wav"),
        on_upload=mp.ProgressBar(out, mode="log").transfer,
        check=False,
        reuse=False,
    )
    assert "uploading 3.0 MB of 3.0 MB" in out.getvalue()


def wav_header(seconds, rate=8000):
    """A WAV header for ``seconds`` of 8-bit mono audio (no data after it)."""
    import struct

    data = int(seconds * rate)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
        + b"data"
        + struct.pack("<I", data)
    )


def make_input(tmp_path, kind):
    path = tmp_path / ("input.wav" if kind not in ("extension",) else "notes.txt")
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(str(path))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "too-large":
        with open(str(path), "wb") as out:
            out.truncate(mp.MAX_UPLOAD_BYTES + 1)  # sparse: costs no disk
    elif kind == "extension":
        path.write_bytes(b"hello")
    elif kind == "too-long":
        with open(str(path), "wb") as out:
            out.write(wav_header(15 * 60 + 1))
            out.truncate(44 + (15 * 60 + 1) * 8000)
    return str(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX")
@pytest.mark.parametrize(
    "kind", ["folder", "fifo", "empty", "too-large", "extension", "too-long", "missing"]
)
def test_each_check_refuses_before_any_request(server, tmp_path, kind):
    server.serve(FakeAPI("ok"))
    path = make_input(tmp_path, kind) if kind != "missing" else str(tmp_path / "gone.wav")
    with pytest.raises(ConfigurationError) as info:
        submit_to(server, path)
    assert os.path.basename(path) in str(info.value)
    assert_nothing_sent(server)


def test_a_wav_of_exactly_fifteen_minutes_passes_the_check(server, tmp_path):
    path = tmp_path / "limit.wav"
    with open(str(path), "wb") as out:
        out.write(wav_header(15 * 60))
        out.truncate(44 + 15 * 60 * 8000)
    api = FakeAPI("ok")
    server.serve(api)
    submit_to(server, str(path))
    assert len(api.posts) == 1


def test_no_check_sends_an_unlisted_type_and_a_long_wav(server, tmp_path):
    api = FakeAPI("ok")
    server.serve(api)
    submit_to(server, make_input(tmp_path, "extension"), check=False)
    submit_to(server, make_input(tmp_path, "too-long"), check=False)
    assert len(api.posts) == 2


def test_a_text_mode_file_is_refused(server, audio_file):
    server.serve(FakeAPI("ok"))
    with open(audio_file, encoding="latin-1") as handle:
        with pytest.raises(ConfigurationError, match="binary"):
            submit_to(server, handle)
    assert_nothing_sent(server)


def test_a_file_that_shrinks_while_it_is_sent_fails_and_creates_nothing(server, tmp_path):
    path = tmp_path / "shrinking.wav"
    path.write_bytes(os.urandom(2_000_000))
    api = FakeAPI("ok")
    server.serve(api)

    def shrink(sent, total):
        if sent >= 256 * 1024:
            with open(str(path), "r+b") as handle:
                handle.truncate(300_000)

    with pytest.raises(ConfigurationError, match="shorter"):
        submit_to(server, str(path), on_upload=shrink, check=False)
    assert api.jobs == []


def posts_and_jobs(api):
    return len(api.posts), len(api.jobs)


def test_answer_lost_after_the_job_was_taken_is_found_not_paid_again(server, audio_file):
    api = FakeAPI("drop")
    server.serve(api)
    job = submit_to(server, audio_file)
    assert posts_and_jobs(api) == (1, 1)
    assert job.denoise_id == api.jobs[0]["id"]
    # One look before paying (an empty account: one empty page), the upload,
    # one look after its answer was lost (the job, then an empty page).
    assert [r.method for r in server.requests] == ["GET", "POST", "GET", "GET"]


def test_a_record_that_appears_late_is_found_by_the_second_look(server, audio_file):
    api = FakeAPI("late")
    server.serve(api)
    job = submit_to(server, audio_file)
    assert posts_and_jobs(api) == (1, 1)
    assert job.denoise_id == api.jobs[0]["id"]
    assert [r.method for r in server.requests] == ["GET", "POST", "GET", "GET", "GET"]


@pytest.mark.parametrize("answer", ["502", "504", "500"])
def test_a_gateway_error_after_the_job_was_taken_is_found(server, audio_file, answer):
    api = FakeAPI(answer)
    server.serve(api)
    job = submit_to(server, audio_file)
    assert posts_and_jobs(api) == (1, 1) and job.denoise_id == api.jobs[0]["id"]


def test_connection_dropped_before_the_job_was_taken_is_sent_again(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(os.urandom(3_000_000))
    api = FakeAPI("midway", "ok")
    server.serve(api)
    job = submit_to(server, str(tmp_path / "a.wav"), check=False)
    assert posts_and_jobs(api) == (2, 1)
    # A fresh body: the second upload is whole, not a consumed stream.
    assert api.uploaded() == (tmp_path / "a.wav").read_bytes()
    assert job.denoise_id == api.jobs[0]["id"]
    # A look before each upload (another caller may have sent it meanwhile),
    # none for a lost answer (the first certainly made no job), and one
    # after the answered upload, for a second job of this content.
    methods = [r.method for r in server.requests]
    assert methods == ["GET", "POST", "GET", "POST", "GET", "GET"]


@pytest.mark.parametrize("answer", ["429", "503"])
def test_429_and_503_are_sent_again_without_a_lookup(server, audio_file, answer):
    api = FakeAPI(answer, answer, "ok")
    server.serve(api)
    submit_to(server, audio_file)
    assert posts_and_jobs(api) == (3, 1)
    assert [r.method for r in server.requests] == [
        "GET",
        "POST",
        "GET",
        "POST",
        "GET",
        "POST",
        "GET",
        "GET",
    ]
    assert api.uploaded() == open(audio_file, "rb").read()


def test_a_lost_answer_with_no_job_behind_it_is_sent_again(server, audio_file):
    api = FakeAPI("untaken-502", "ok")
    server.serve(api)
    submit_to(server, audio_file)
    assert posts_and_jobs(api) == (2, 1)
    methods = [r.method for r in server.requests]
    # The two looks after the lost answer and the one before the next upload
    # read an empty account (one page each); the look after the answered
    # upload finds it, then an empty page.
    assert methods == ["GET", "POST", "GET", "GET", "GET", "POST", "GET", "GET"]


def test_connection_refused_is_sent_again_once_it_can_connect(audio_file):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(TransportError, match="cannot reach"):
        mp.submit(
            audio_file,
            api_key=KEY,
            base_url="http://127.0.0.1:%d" % port,
            retry=RetryPolicy(max_retries=2, backoff_max=0.01),
        )


def test_several_candidate_jobs_raise_and_name_them_without_sending_again(server, audio_file):
    api = FakeAPI("drop")
    server.serve(api)
    size = os.path.getsize(audio_file)
    for _ in range(2):  # the same file, submitted twice a moment ago
        api.jobs.append(
            {
                "id": str(uuid_module.uuid4()),
                "status": "pending",
                "file_name": "interview.wav",
                "audio_size": size,
                "created_at": iso_now(),
                "visible_at": 0,
            }
        )
    with pytest.raises(mp.SubmissionUnknownError) as info:
        submit_to(server, audio_file, tag=False)
    assert len(info.value.candidates) == 3
    assert all(job["id"] in str(info.value) for job in api.jobs)
    assert len(api.posts) == 1
    assert mp._exit_status(info.value) == mp.EXIT_UNSURE == 6


def test_a_lookup_that_fails_is_unknown_not_a_second_upload(server, audio_file):
    api = FakeAPI("drop")

    def no_list(conn, request, srv):
        if request.method == "GET":
            error_response(500)(conn, request, srv)
        else:
            api(conn, request, srv)

    server.serve(no_list)
    with pytest.raises(mp.SubmissionUnknownError, match="could not be looked up"):
        submit_to(server, audio_file, reuse=False)
    assert posts_and_jobs(api) == (1, 1)


@pytest.mark.parametrize(
    "name, stored",
    [
        # busboy's default: UTF-8 bytes read as Latin-1
        ("مقابلة café.wav", lambda name: name.encode("utf-8").decode("latin-1")),
        # a name that is not UTF-8 on disk, read with replacement characters
        (
            os.fsdecode(b"caf\xe9 \xff.wav"),
            lambda name: name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        ),
    ],
    ids=["latin-1", "not-utf8"],
)
def test_a_name_the_server_mangled_is_still_found(server, tmp_path, name, stored):
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as handle:
        handle.write(mp._demo_wav())
    api = FakeAPI("drop", stored_name=stored)
    server.serve(api)
    job = submit_to(server, path)
    assert len(api.jobs) == 1 and job.denoise_id == api.jobs[0]["id"]


def test_a_name_a_parser_read_with_backslash_escapes_is_still_found(server, tmp_path):
    # The email package reads a backslash in a quoted filename as an escape
    # (a quoted-pair): 'take\2' comes back as 'take2', and a quote as %22.
    name = 'my "best" take\\2.wav'
    (tmp_path / name).write_bytes(mp._demo_wav())
    api = FakeAPI("drop")
    server.serve(api)
    job = submit_to(server, str(tmp_path / name), tag=False)
    assert api.jobs[0]["file_name"] == "my %22best%22 take2.wav"
    assert len(api.jobs) == 1 and job.denoise_id == api.jobs[0]["id"]


def test_a_job_of_this_size_under_another_non_ascii_name_is_unsure_not_resent(server, tmp_path):
    (tmp_path / "مقابلة.wav").write_bytes(mp._demo_wav())
    api = FakeAPI("untaken-502")
    server.serve(api)
    api.jobs.append(
        {
            "id": str(uuid_module.uuid4()),
            "status": "pending",
            "file_name": "????.wav",
            "audio_size": len(mp._demo_wav()),
            "created_at": iso_now(),
            "visible_at": 0,
        }
    )
    with pytest.raises(mp.SubmissionUnknownError, match="another name"):
        submit_to(server, str(tmp_path / "مقابلة.wav"), tag=False)
    assert len(api.posts) == 1


def test_record_times_a_few_seconds_behind_the_date_header_are_still_found(server, audio_file):
    api = FakeAPI("drop", clock_offset=-8.0)
    server.serve(api)
    job = submit_to(server, audio_file)
    assert len(api.jobs) == 1 and job.denoise_id == api.jobs[0]["id"]


def test_the_lookup_pages_back_past_many_newer_jobs(server, audio_file):
    api = FakeAPI("drop")
    server.serve(api)
    began = time.time()
    taken = {
        "id": str(uuid_module.uuid4()),
        "status": "pending",
        "file_name": "interview.wav",
        "audio_size": os.path.getsize(audio_file),
        "created_at": iso_now(),
        "visible_at": 0,
    }
    api.jobs.append(taken)
    for n in range(130):  # other hosts' jobs, newer
        api.jobs.append(
            {
                "id": str(uuid_module.uuid4()),
                "status": "pending",
                "file_name": "other%d.wav" % n,
                "audio_size": 10,
                "created_at": iso_now(1),
                "visible_at": 0,
            }
        )
    client = mp._Call(KEY, server.base_url, None)
    source = mp._Source(audio_file, True)
    try:
        content = source.identify(lambda: None)
        found = mp._look_up(
            client,
            source,
            "interview.wav",
            content,
            began - 1,
            QUICK,
            mp._JobOptions(tag=False),
            mp._Hooks(),
        )
    finally:
        source.close()
        client.close()
    assert found is not None and found.denoise_id == taken["id"]
    assert [r.path for r in server.requests if "offset=100" in r.path]


def test_a_deadline_during_the_lookup_is_unsure_not_a_timeout(server, audio_file):
    api = FakeAPI("drop")

    def slow_list(conn, request, srv):
        if request.method == "GET":
            hold(conn, srv, 10)
        else:
            api(conn, request, srv)

    server.serve(slow_list)
    with pytest.raises(mp.SubmissionUnknownError, match="could not be looked up"):
        submit_to(server, audio_file, timeout=2, reuse=False)


def test_huge_integers_in_a_record_are_left_out(server):
    body = ('[{"id": "%s", "status": "success", "audio_size": %s}]' % (JOB, "9" * 400)).encode()
    server.serve(raw_bytes(head(200, {"Content-Length": str(len(body))}) + body))
    assert mp.list_jobs(api_key=KEY, base_url=server.base_url)[0].audio_size is None


def test_older_jobs_of_the_same_file_are_not_taken_for_this_one(server, audio_file):
    api = FakeAPI("untaken-502", "ok")
    server.serve(api)
    api.jobs.append(
        {
            "id": str(uuid_module.uuid4()),
            "status": "success",
            "file_name": "interview.wav",
            "audio_size": os.path.getsize(audio_file),
            "created_at": iso_now(-3600),
            "visible_at": 0,
        }
    )
    job = submit_to(server, audio_file)
    assert posts_and_jobs(api) == (2, 2) and job.denoise_id == api.jobs[-1]["id"]


def test_a_deadline_after_the_file_was_sent_is_unknown_not_a_timeout(server, audio_file):
    api = FakeAPI("hang")
    server.serve(api)
    started = time.monotonic()
    with pytest.raises(mp.SubmissionUnknownError, match="may exist"):
        submit_to(server, audio_file, timeout=1.5)
    assert time.monotonic() - started < 3
    assert len(api.posts) == 1


@pytest.mark.parametrize(
    "answer, error",
    [
        ("400", APIError),
        ("401", AuthenticationError),
        ("403", AuthenticationError),
        ("402", mp.PaymentRequiredError),
    ],
)
def test_refusals_map_to_typed_errors_and_are_not_sent_again(server, audio_file, answer, error):
    api = FakeAPI(answer)
    server.serve(api)
    with pytest.raises(error) as info:
        submit_to(server, audio_file)
    assert type(info.value) is error
    assert info.value.status_code == int(answer)
    assert info.value.error_code == "4%s01" % answer[1:]
    assert info.value.error_message == "refused (%s)" % answer
    assert len(api.posts) == 1


def test_a_redirect_of_the_upload_to_another_origin_is_not_followed(server, audio_file):
    other = Server()
    try:
        other.serve(FakeAPI("ok"))

        def moved(conn, request, srv):
            read_body(conn, request)  # as servers do; see the 302 test below
            error_response(307, headers={"Location": other.origin + "/api/v1/denoise"})(
                conn, request, srv
            )

        server.serve(moved)
        with pytest.raises(APIError, match="another origin"):
            submit_to(server, audio_file)
        assert_nothing_sent(other)
    finally:
        other.close()


def test_a_307_within_the_origin_is_followed_with_a_fresh_body(server, audio_file):
    api = FakeAPI("ok")

    def moved(conn, request, srv):
        read_body(conn, request)
        error_response(307, headers={"Location": "/api/v2/denoise"})(conn, request, srv)

    server.serve(moved, api)
    job = submit_to(server, audio_file, reuse=False)
    assert [r.path for r in server.requests] == ["/api/v1/denoise", "/api/v2/denoise"]
    assert api.uploaded() == open(audio_file, "rb").read()
    assert job.denoise_id == api.jobs[0]["id"]


def test_a_302_of_the_upload_is_not_turned_into_a_get(server, audio_file):
    def moved(conn, request, srv):
        # Read first, as servers do: urllib3 1.x cannot read an answer sent
        # before its body went out, and would see a broken upload instead.
        read_body(conn, request)
        error_response(302, headers={"Location": "/api/v1/elsewhere"})(conn, request, srv)

    server.serve(moved)
    with pytest.raises(APIError, match="not followed"):
        submit_to(server, audio_file, reuse=False)
    assert [r.method for r in server.requests] == ["POST"]


def test_uploading_a_large_file_keeps_memory_flat(server, tmp_path):
    import tracemalloc

    path = tmp_path / "large.wav"
    with open(str(path), "wb") as out:
        out.truncate(150 * 1024 * 1024)  # sparse

    def discard(conn, request, srv):
        read_body(conn, request, keep=False)
        job = str(uuid_module.uuid4())
        body = json.dumps({"jobId": job, "denoiseId": job}).encode()
        conn.sendall(head(200, {"Content-Length": str(len(body)), "Connection": "close"}) + body)

    server.serve(discard)
    tracemalloc.start()
    try:
        mp.submit(str(path), api_key=KEY, base_url=server.base_url, check=False, reuse=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak  # requests' files= would hold 300 MB


def test_list_jobs_returns_records_newest_first(server):
    records = [
        {
            "id": "5B1D2F7E3F814C2A9C5D7A2E91B4C7A1",
            "status": "success",
            "audio_url": "https://x/a.wav",
            "file_name": "a.wav",
            "audio_size": 1000,
            "audio_duration": 12.5,
            "source_type": "audio",
            "error": None,
            "created_at": "2026-11-26T07:00:00.000Z",
            "updated_at": "2026-11-26T07:01:00.000Z",
            "user_id": "u",
            "transaction_id": "t",
        },
        {"id": JOB, "status": "failed", "error": "bad audio"},
    ]
    body = json.dumps(records).encode()
    server.serve(
        raw_bytes(
            head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body
        )
    )
    jobs = mp.list_jobs(limit=2, offset=3, api_key=KEY, base_url=server.base_url)
    assert server.requests[0].path == "/api/v1/denoise?offset=3&limit=2"
    assert server.requests[0].headers["x-api-key"] == KEY
    assert jobs[0] == mp.JobRecord(
        JOB,
        "success",
        "https://x/a.wav",
        "a.wav",
        1000,
        12.5,
        "audio",
        None,
        "2026-11-26T07:00:00.000Z",
        "2026-11-26T07:01:00.000Z",
    )
    assert jobs[1].status == "failed" and jobs[1].error == "bad audio" and jobs[1].file_name is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        jobs[0].status = "x"


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "x"}',
        b"[1, 2]",
        b'[{"status": "success"}]',
        b'[{"id": "not-a-uuid", "status": "success"}]',
        b'[{"id": "%s"}]' % JOB.encode(),
        b"<html>",
    ],
)
def test_list_jobs_refuses_what_is_not_a_list_of_records(server, body):
    server.serve(
        raw_bytes(
            head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body
        )
    )
    with pytest.raises(ProtocolError):
        mp.list_jobs(api_key=KEY, base_url=server.base_url)


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": -1}, {"offset": -1}, {"limit": 1.5}, {"limit": True}]
)
def test_list_jobs_refuses_bad_bounds_before_any_request(server, kwargs):
    server.serve(raw_bytes(b""))
    with pytest.raises(ConfigurationError):
        mp.list_jobs(api_key=KEY, base_url=server.base_url, **kwargs)
    assert_nothing_sent(server)


def test_list_jobs_retries_a_503(server):
    body = b"[]"
    server.serve(
        error_response(503, headers={"Retry-After": "0"}),
        raw_bytes(head(200, {"Content-Length": "2"}) + body),
    )
    assert mp.list_jobs(api_key=KEY, base_url=server.base_url, retry=FAST) == []


# --------------------------------------------------------------------------
# Finding a job: content tags, looking before paying (issue 13)
# --------------------------------------------------------------------------


def a_record(name, size, status="success", age=0.0, **fields):
    """A job of the account, as the fake API keeps it, ``age`` seconds old."""
    record = {
        "id": str(uuid_module.uuid4()),
        "status": status,
        "file_name": name,
        "audio_size": size,
        "created_at": iso_now(-age),
        "visible_at": 0,
    }
    record.update(fields)
    return record


def test_the_tag_is_the_first_20_hex_digits_of_the_sha256_before_the_name(tmp_path):
    import hashlib

    path = tmp_path / "take 1.wav"
    path.write_bytes(b"a recording")
    digest = hashlib.sha256(b"a recording").hexdigest()
    # The stable public format: later versions must recognise it.
    assert mp.content_tag(str(path)) == "munsit-" + digest[:20]
    assert mp._tagged_name("take 1.wav", "munsit-" + digest[:20]) == (
        "munsit-%s.take 1.wav" % digest[:20]
    )
    # First, so that a server that cuts long names short keeps it; the
    # extension, by which the server tells audio from video, still ends it.
    assert mp._tagged_name("noext", "munsit-x") == "munsit-x.noext"
    assert mp._tagged_name("clip.final.mp4", "munsit-x") == "munsit-x.clip.final.mp4"


def test_an_open_file_is_tagged_by_its_bytes_from_its_position(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(b"headerBODY")
    (tmp_path / "b.wav").write_bytes(b"BODY")
    with open(str(path), "rb") as handle:
        handle.seek(6)
        assert mp.content_tag(handle) == mp.content_tag(str(tmp_path / "b.wav"))


MATCHER_TABLE = [
    # (stored name, stored size, verdict): the tag's digits anywhere, any case
    ("interview.munsit-0123456789abcdef0123.wav", 100, "yes"),
    ("INTERVIEW.MUNSIT-0123456789ABCDEF0123.WAV", 100, "yes"),
    ("interview_munsit-0123456789abcdef0123_wav", 100, "yes"),
    ("u42/interview.munsit-0123456789abcdef0123.wav", 100, "yes"),
    ("interview.munsit-0123456789abcdef0123.wav", None, "yes"),
    ("interview.munsit-0123456789abcdef0123.wav", 101, "no"),
    ("interview.munsit-0123456789abcdef0124.wav", 100, "no"),
    ("interview.wav", 100, "no"),  # never by name and size alone
    (None, 100, "no"),
]


@pytest.mark.parametrize("stored, size, verdict", MATCHER_TABLE)
def test_the_matcher_knows_a_job_by_its_tag_and_size(stored, size, verdict):
    content = mp._Content("0123456789abcdef0123" + "0" * 44, 100)
    record = mp.JobRecord(JOB, "success", file_name=stored, audio_size=size)
    assert mp._match(record, mp._Wanted(content)) == verdict


def test_the_matcher_never_takes_an_excluded_job_or_one_older_than_the_window():
    content = mp._Content("0123456789abcdef0123" + "0" * 44, 100)
    name = "a.munsit-0123456789abcdef0123.wav"
    old = mp.JobRecord(JOB, "success", file_name=name, created_at="2020-01-01T00:00:00Z")
    assert mp._match(old, mp._Wanted(content, excluded=frozenset([JOB]))) == "no"
    assert mp._match(old, mp._Wanted(content, since=time.time())) == "no"
    assert mp._match(old, mp._Wanted(content)) == "yes"


@pytest.mark.parametrize(
    "stored, verdict",
    [("a.wav", "yes"), ("A.WAV", "maybe"), ("b.wav", "no")],
)
def test_the_untagged_matcher_takes_the_sent_name_and_is_unsure_of_a_mangled_one(stored, verdict):
    record = mp.JobRecord(JOB, "pending", file_name=stored, audio_size=100)
    assert mp._match(record, mp._Wanted(None, names=["a.wav"], size=100)) == verdict


def test_of_one_content_s_jobs_a_success_is_adopted_before_a_pending_or_a_failed_one():
    failed = mp.JobRecord("1" * 32, "failed")
    pending = mp.JobRecord("2" * 32, "pending")
    done = mp.JobRecord("3" * 32, "success")
    assert mp._chosen_job([failed, pending, done]) is done
    assert mp._chosen_job([failed, pending]) is pending
    assert mp._chosen_job([failed]) is failed
    assert mp._chosen_job([]) is None


def test_a_second_submit_of_the_same_content_adopts_its_job_and_pays_nothing(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    (tmp_path / "copy.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    first = submit_to(server, str(tmp_path / "a.wav"), check=False)
    again = submit_to(server, str(tmp_path / "a.wav"), check=False)
    renamed = submit_to(server, str(tmp_path / "copy.wav"), check=False)
    assert len(api.posts) == 1
    assert not first.adopted and again.adopted and renamed.adopted
    assert first.denoise_id == again.denoise_id == renamed.denoise_id


def test_no_reuse_always_sends_and_the_newest_job_is_found_later(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    first = submit_to(server, str(tmp_path / "a.wav"), check=False)
    api.set_status(first.denoise_id, "pending")
    requests_before = len(server.requests)
    second = submit_to(server, str(tmp_path / "a.wav"), check=False, reuse=False)
    assert len(api.posts) == 2 and second.denoise_id != first.denoise_id
    assert [r.method for r in server.requests[requests_before:]] == ["POST"]
    assert api.posts[1][1][0].get_filename() == api.posts[0][1][0].get_filename()
    found = submit_to(server, str(tmp_path / "a.wav"), check=False)
    assert found.adopted and found.denoise_id == second.denoise_id


def test_no_tag_sends_the_plain_name_and_looks_nothing_up_first(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    job = submit_to(server, str(tmp_path / "a.wav"), check=False, tag=False)
    assert api.posts[0][1][0].get_filename() == "a.wav" == job.file_name
    assert [r.method for r in server.requests] == ["POST"]


@pytest.mark.parametrize(
    "stored",
    [
        lambda name: name.lower(),
        lambda name: name.replace(".", "_"),
        lambda name: "user-17/" + name,
        lambda name: name.upper(),
    ],
    ids=["lower-cased", "dots-replaced", "prefixed", "upper-cased"],
)
def test_a_job_whose_name_the_server_changed_is_still_found_by_its_tag(server, tmp_path, stored):
    (tmp_path / "Take One.WAV").write_bytes(b"one recording")
    api = FakeAPI("drop", "ok", stored_name=stored)
    server.serve(api)
    lost = submit_to(server, str(tmp_path / "Take One.WAV"), check=False)  # answer lost: found
    again = submit_to(server, str(tmp_path / "Take One.WAV"), check=False)
    assert len(api.posts) == 1 and lost.denoise_id == again.denoise_id == api.jobs[0]["id"]
    assert again.adopted


def test_a_lost_answer_never_adopts_another_recording_of_the_same_name_and_size(server, tmp_path):
    # Fixed-length clips, all called audio.wav: another host's clip was
    # taken a moment ago, then this clip's answer is lost.
    (tmp_path / "audio.wav").write_bytes(b"clip B" * 100)
    api = FakeAPI("drop")
    server.serve(api)
    twin = a_record("audio.munsit-%s.wav" % ("f" * 20), 600, "pending")
    api.jobs.append(twin)
    job = submit_to(server, str(tmp_path / "audio.wav"), check=False)
    assert len(api.posts) == 1
    assert job.denoise_id == api.jobs[-1]["id"] != twin["id"]


def test_a_failed_job_of_this_content_raises_with_its_id_unless_retry_failed(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    failed = a_record(tagged("a.wav", str(tmp_path / "a.wav")), 13, "failed", 60)
    failed["error"] = "audio file is corrupt"
    api.jobs.append(failed)
    with pytest.raises(DenoiseFailedError) as info:
        submit_to(server, str(tmp_path / "a.wav"), check=False)
    assert info.value.denoise_id == failed["id"] and "corrupt" in str(info.value)
    assert "retry_failed=True" in str(info.value) and not api.posts
    assert "--retry-failed" not in str(info.value)  # the CLI's flag, not Python's
    job = submit_to(server, str(tmp_path / "a.wav"), check=False, retry_failed=True)
    assert len(api.posts) == 1 and job.denoise_id != failed["id"] and not job.adopted


def test_denoise_of_a_job_found_still_running_that_then_fails_is_sent_again_if_asked(
    server, tmp_path
):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    name = tagged("a.wav", str(tmp_path / "a.wav"))
    api = FakeAPI("ok", echo=True, by_name={"a.wav": stream(FAILED)})
    server.serve(api)
    api.jobs.append(a_record(name, 13, "pending", 30))
    with pytest.raises(DenoiseFailedError) as info:
        denoise_on(server, str(tmp_path / "a.wav"), str(tmp_path / "out.wav"), check=False)
    assert info.value.denoise_id == api.jobs[0]["id"] and not api.posts
    api.by_name = {}
    done = denoise_on(
        server, str(tmp_path / "a.wav"), str(tmp_path / "out.wav"), check=False, retry_failed=True
    )
    assert len(api.posts) == 1 and done.denoise_id == api.jobs[-1]["id"]
    assert (tmp_path / "out.wav").read_bytes() == b"one recording"


def test_denoise_again_follows_and_saves_the_job_it_finds(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    first = denoise_on(server, str(tmp_path / "a.wav"), str(tmp_path / "1.wav"), check=False)
    second = denoise_on(server, str(tmp_path / "a.wav"), str(tmp_path / "2.wav"), check=False)
    assert len(api.posts) == 1 and first.denoise_id == second.denoise_id
    assert (tmp_path / "2.wav").read_bytes() == b"one recording"


def test_a_found_job_whose_result_is_gone_names_it_and_says_how_to_send_again(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    found = a_record(tagged("a.wav", str(tmp_path / "a.wav")), 13, "success", 86400)
    api.jobs.append(found)

    def expired(conn, request, srv):
        if request.path.startswith("/files/"):
            error_response(410)(conn, request, srv)
        else:
            api(conn, request, srv)

    server.serve(expired)
    with pytest.raises(APIError) as info:
        denoise_on(server, str(tmp_path / "a.wav"), str(tmp_path / "out.wav"), check=False)
    assert info.value.status_code == 410 and info.value.denoise_id == found["id"]
    assert found["id"] in str(info.value) and "reuse=False" in str(info.value)
    assert not api.posts


def test_the_look_before_paying_pages_past_short_pages_to_the_horizon(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    mine = a_record(tagged("a.wav", str(tmp_path / "a.wav")), 13, "success", 3 * 86400)
    api.jobs.append(mine)
    for n in range(400):  # newer jobs of other files
        api.jobs.append(a_record("other%d.wav" % n, 10, age=86400 - n))

    def capped(conn, request, srv):  # pages of at most 30, whatever limit asks
        if request.method == "GET" and "limit=" in request.path:
            request.path = re.sub(r"limit=\d+", "limit=30", request.path)
        api(conn, request, srv)

    server.serve(capped)
    job = submit_to(server, str(tmp_path / "a.wav"), check=False)
    assert job.adopted and job.denoise_id == mine["id"] and not api.posts


def test_the_look_stops_at_the_horizon_and_reads_a_bounded_history(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    # An account of 20,000 jobs over 200 days: 100 a day, 700 in a week.
    api.jobs.extend(a_record("rec%05d.wav" % n, 10, age=(20000 - n) * 864.0) for n in range(20000))
    server.serve(api)
    reads = []
    original = mp._list

    def counted(client, limit, offset):
        records, skew = original(client, limit, offset)
        reads.append(len(records))
        return records, skew

    mp._list = counted
    try:
        job = submit_to(server, str(tmp_path / "a.wav"), check=False)
    finally:
        mp._list = original
    assert not job.adopted and len(api.posts) == 1
    assert 700 <= sum(reads) <= 1500, reads


def test_a_job_pushed_onto_the_next_page_by_new_arrivals_counts_once(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"clip" * 50)
    api = FakeAPI("drop")
    api.jobs.extend(a_record("old%d.wav" % n, 10, age=600) for n in range(100))
    arrivals = iter([70, 30, 30, 30])

    def shifting(conn, request, srv):
        # Jobs of other hosts arrive at the front before each page is read:
        # this upload's job ends the first page and starts the second.
        if request.method == "GET":
            with api.lock:
                api.jobs.extend(a_record("new.wav", 10) for _ in range(next(arrivals, 0)))
        elif request.method == "POST":
            with api.lock:
                api.jobs.extend(a_record("recent.wav", 10) for _ in range(29))
        api(conn, request, srv)

    server.serve(shifting)
    job = submit_to(server, str(tmp_path / "a.wav"), check=False, tag=False)
    (mine,) = [record for record in api.jobs if record["file_name"] == "a.wav"]
    assert len(api.posts) == 1 and job.denoise_id == mine["id"]  # not "unsure"
    assert any("offset=100" in r.path for r in server.requests)


def test_two_calls_at_once_with_a_lock_pay_once(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    held = threading.Lock()
    keys = []
    waiting = threading.Semaphore(0)

    class Lock:
        def __init__(self, key):
            keys.append(key)

        def __enter__(self):
            waiting.release()  # this caller asks for the lock
            held.acquire()

        def __exit__(self, *exc):
            held.release()

    api.pause_at = ("post-head", 1)  # the first upload waits at the server
    results = []

    def call():
        results.append(submit_to(server, str(tmp_path / "a.wav"), check=False, lock=Lock))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert api.hit.wait(10)  # one caller holds the lock and is uploading
    assert waiting.acquire(timeout=10) and waiting.acquire(timeout=10)  # the other asks
    api.release.set()
    for thread in threads:
        thread.join(20)
    assert len(api.posts) == 1 and len(results) == 2
    assert results[0].denoise_id == results[1].denoise_id
    assert sorted(job.adopted for job in results) == [False, True]
    assert keys == ["munsit-progress:%s:13" % hashlib_of(b"one recording")] * 2


def hashlib_of(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_two_calls_at_once_without_a_lock_may_pay_twice_and_say_so(server, tmp_path, caplog):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)
    both_looked = threading.Barrier(2, timeout=10)
    original = mp._JobHistory.refresh
    first_look = threading.local()

    def refresh(self, client, policy):
        original(self, client, policy)
        if not getattr(first_look, "done", False):
            first_look.done = True
            both_looked.wait()  # both have looked, and found nothing

    results = []
    mp._JobHistory.refresh = refresh
    try:

        def call():
            results.append(submit_to(server, str(tmp_path / "a.wav"), check=False))

        threads = [threading.Thread(target=call) for _ in range(2)]
        with caplog.at_level(logging.WARNING, logger="munsit_progress"):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
    finally:
        mp._JobHistory.refresh = original
    assert len(api.posts) == 2  # the race the lock= argument closes
    warned = [r.getMessage() for r in caplog.records if "sent twice" in r.getMessage()]
    assert warned and all(job["id"] in " ".join(warned) for job in api.jobs)


def denoise_paused_mid_download(server, api, source, target):
    """denoise() on a thread, held by the fake API halfway through its
    download; (the thread, the list that gets what it raised)."""
    api.pause_at = ("download-half", 1)
    server.serve(api)
    caught = []

    def run():
        try:
            denoise_on(server, str(source), str(target), check=False)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert api.hit.wait(10)
    return thread, caught


def test_a_save_that_fails_after_the_job_was_taken_is_a_save_error_with_the_job(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    out = tmp_path / "out"
    out.mkdir()
    api = FakeAPI("ok", echo=True)
    thread, caught = denoise_paused_mid_download(server, api, tmp_path / "a.wav", out / "clean.wav")
    import shutil

    shutil.rmtree(str(out))  # the folder is removed mid-download
    api.release.set()
    thread.join(20)
    (error,) = caught
    assert isinstance(error, mp.SaveError) and isinstance(error, mp.MunsitError)
    assert isinstance(error, OSError) and error.errno is not None
    assert error.denoise_id == api.jobs[0]["id"] and api.jobs[0]["id"] in str(error)
    assert pickle.loads(pickle.dumps(error)).denoise_id == error.denoise_id


def test_a_disk_that_fills_while_saving_is_a_save_error_with_the_job(server, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here: %s" % mounted.stderr.strip())
    try:
        (tmp_path / "a.wav").write_bytes(os.urandom(300_000))
        api = FakeAPI("ok", echo=True)
        server.serve(api)
        with pytest.raises(mp.SaveError) as info:
            denoise_on(server, str(tmp_path / "a.wav"), str(small / "clean.wav"), check=False)
        assert info.value.errno == __import__("errno").ENOSPC
        assert info.value.denoise_id == api.jobs[0]["id"]
        assert os.listdir(str(small)) == []  # no partial file left
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_wait_errors_carry_the_job_it_was_following(server):
    server.serve(error_response(404))
    with pytest.raises(mp.JobNotFoundError) as info:
        wait_on(server)
    assert info.value.denoise_id == JOB
    assert "paid for" not in str(info.value)  # the caller named the job: no advice


def test_a_server_that_cuts_long_names_short_still_keeps_the_tag(server, tmp_path):
    name = "Interview with the regional director about the spring budget, part 1.wav"
    (tmp_path / name).write_bytes(b"one recording")
    api = FakeAPI("drop", "ok", stored_name=lambda sent: sent[:60])
    server.serve(api)
    lost = submit_to(server, str(tmp_path / name), check=False)  # answer lost: found
    again = submit_to(server, str(tmp_path / name), check=False)
    assert len(api.posts) == 1 and again.adopted
    assert lost.denoise_id == again.denoise_id == api.jobs[0]["id"]


def test_a_file_rewritten_after_it_was_hashed_is_not_sent_under_the_old_tag(server, tmp_path):
    path = tmp_path / "a.wav"
    size = 3 * 1024 * 1024
    path.write_bytes(b"A" * size)
    api = FakeAPI("ok", echo=True)
    server.serve(api)

    def rewrite(sent, total):  # a recorder rewriting the file in place, mid-upload
        if sent == 1024 * 1024:
            with open(str(path), "r+b") as handle:
                handle.write(b"B" * size)
            os.utime(str(path), ns=(time.time_ns(), time.time_ns() + 10**9))

    with pytest.raises(ConfigurationError, match="changed after it was read"):
        submit_to(server, str(path), check=False, on_upload=rewrite)
    assert api.jobs == []  # no closing boundary: no job
    job = submit_to(server, str(path), check=False)
    assert not job.adopted and api.uploaded() == b"B" * size
    assert api.posts[-1][1][0].get_filename() == tagged("a.wav", str(path))


class RecordingLock:
    """A lock= callable that notes when it is taken and given back."""

    def __init__(self, on_take=None, on_give=None):
        self.log = []
        self._on_take = on_take
        self._on_give = on_give

    def __call__(self, key):
        return self._Guard(self, key)

    class _Guard:
        def __init__(self, owner, key):
            self.owner, self.key = owner, key

        def __enter__(self):
            self.owner.log.append("take")
            if self.owner._on_take is not None:
                self.owner._on_take()

        def __exit__(self, *exc):
            self.owner.log.append("give")
            if self.owner._on_give is not None:
                self.owner._on_give()


def test_the_lock_is_given_back_while_a_retry_after_is_obeyed_and_the_look_made_again(
    server, tmp_path
):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("429", "ok")
    server.serve(api)
    lock = RecordingLock()
    paused = []
    policy = dataclasses.replace(QUICK, sleep=lambda s: paused.append(list(lock.log)))
    submit_to(server, str(tmp_path / "a.wav"), check=False, lock=lock, retry=policy)
    assert paused and paused[0] == ["take", "give"]  # not held during the pause
    assert lock.log == ["take", "give", "take", "give"]
    methods = [r.method for r in server.requests]
    assert methods[:4] == ["GET", "POST", "GET", "POST"]  # looked again before sending again


def test_a_lock_that_cannot_be_given_back_is_a_warning_not_a_lost_job(server, tmp_path, caplog):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    server.serve(api)

    def expired():
        raise RuntimeError("LockNotOwnedError: the lock expired")

    with caplog.at_level(logging.WARNING, logger="munsit_progress"):
        job = submit_to(
            server, str(tmp_path / "a.wav"), check=False, lock=RecordingLock(on_give=expired)
        )
    assert job.denoise_id == api.jobs[0]["id"]
    assert any("could not give back the lock" in r.getMessage() for r in caplog.records)


def test_a_lock_that_cannot_be_taken_is_a_munsit_error_and_nothing_is_sent(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    server.serve(FakeAPI("ok"))

    def broken(key):
        raise ConnectionError("redis is down")

    with pytest.raises(mp.TransportError, match="could not take the lock"):
        submit_to(server, str(tmp_path / "a.wav"), check=False, lock=broken)
    assert_nothing_sent(server)


def test_a_lock_held_past_the_deadline_ends_the_call_before_anything_is_sent(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    server.serve(FakeAPI("ok"))
    now = [1000.0]
    policy = dataclasses.replace(QUICK, clock=lambda: now[0])

    def wait_long():  # the lock was held elsewhere for a minute
        now[0] += 60

    lock = RecordingLock(on_take=wait_long)
    with pytest.raises(WaitTimeoutError, match="lock"):
        submit_to(server, str(tmp_path / "a.wav"), check=False, lock=lock, retry=policy, timeout=30)
    assert lock.log == ["take", "give"]
    assert_nothing_sent(server)


def test_a_journal_that_cannot_be_written_after_the_upload_keeps_the_job_named(
    server, tmp_path, monkeypatch
):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    import sqlite3

    write_step = mp._write_step

    def full_disk(database, event, key, fields, at):
        if event == "submitted":
            raise sqlite3.OperationalError("database or disk is full")
        return write_step(database, event, key, fields, at)

    monkeypatch.setattr(mp, "_write_step", full_disk)
    (result,) = many_on(server, paths, tmp_path / "out")
    assert isinstance(result.error, mp.SaveError) and result.error.errno == 28
    assert result.denoise_id == result.error.denoise_id == api.jobs[0]["id"]


def test_a_batch_rerun_finds_an_unanswered_upload_older_than_the_horizon(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    content = mp._Source(paths[0], True).identify(lambda: None)
    taken = a_record(tagged("in0.wav", paths[0]), content.size, "success", 8 * 86400)
    api.jobs.append(taken)
    api.jobs.extend(a_record("other%d.wav" % n, 10, age=86400 - n) for n in range(300))
    (tmp_path / "out").mkdir()
    write_sending(tmp_path / "out", content, "in0.wav", age=8 * 86400 + 5)
    (result,) = many_on(server, paths, tmp_path / "out")
    assert result.error is None and result.denoise_id == taken["id"] and not api.posts


def test_a_server_that_ignores_the_offset_is_not_read_forever(server, tmp_path, caplog):
    (tmp_path / "a.wav").write_bytes(b"one recording")
    api = FakeAPI("ok")
    api.jobs.extend(a_record("other%d.wav" % n, 10) for n in range(10))

    def same_page(conn, request, srv):
        if request.method == "GET":
            request.path = re.sub(r"offset=\d+", "offset=0", request.path)
        api(conn, request, srv)

    server.serve(same_page)
    with caplog.at_level(logging.WARNING, logger="munsit_progress"):
        job = submit_to(server, str(tmp_path / "a.wav"), check=False)
    assert not job.adopted and len(api.posts) == 1
    assert len([r for r in server.requests if r.method == "GET"]) <= 4
    assert any("repeats itself" in r.getMessage() for r in caplog.records)


def test_record_times_with_an_hour_only_zone_are_read():
    assert mp._epoch("2026-12-03T17:21:32.5+00") == mp._epoch("2026-12-03T17:21:32.5Z")
    assert mp._epoch("2026-12-03T18:21:32+01") == mp._epoch("2026-12-03T17:21:32Z")


# --------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------


class Utf8Stream(io.StringIO):
    encoding = "utf-8"


class AsciiStream(io.StringIO):
    encoding = "ascii"

    def write(self, text):
        text.encode("ascii")  # raises like a real ASCII stream would
        return super().write(text)


def test_log_display_writes_a_line_per_ten_percent_step_or_new_message():
    out = io.StringIO()
    bar = mp.ProgressBar(out, mode="log")
    for pct in (0, 1, 2, 9, 10, 11, 35, 36):
        bar(ProcessingEvent(pct, "same"))
    bar(ProcessingEvent(37, "new message"))
    bar.finish(EXPECTED_DONE)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("munsit: ")[1] for line in lines] == [
        "  0%  same",
        " 10%  same",
        " 35%  same",
        " 37%  new message",
        "done: " + RESULT_URL,
    ]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d munsit: ", line) for line in lines)


def test_terminal_display_updates_one_line_in_place_and_ends_it():
    out = Utf8Stream()
    with mp.ProgressBar(out, mode="terminal") as bar:
        bar(ProcessingEvent(10, "جارٍ التحليل"))
        bar(ProcessingEvent(60, "Running noise reduction"))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") == 2
    assert "جارٍ التحليل" in text and " 60%" in text and "\u2588" in text


def test_display_falls_back_to_ascii_on_a_non_utf8_stream():
    out = AsciiStream()
    bar = mp.ProgressBar(out, mode="terminal")
    bar(ProcessingEvent(50, "تقليل"))
    bar.finish(None)
    assert "[############------------]" in out.getvalue()
    assert "?????" in out.getvalue()


def test_terminal_bar_shrinks_so_that_a_narrow_terminal_keeps_the_message(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    out = Utf8Stream()
    bar = mp.ProgressBar(out, mode="terminal")
    bar(ProcessingEvent(50, "Running noise reduction"))
    line = out.getvalue().split("\r")[-1]
    assert "Running" in line and "\u2588" in line
    assert mp._fit(line, 200)[1] <= 39


def test_text_is_measured_in_terminal_columns():
    assert mp._fit("\u062c\u0627\u0631\u064d", 10) == ("\u062c\u0627\u0631\u064d", 3)  # a mark
    assert mp._fit("\u65e5\u672c\u8a9e" * 10, 11) == ("\u65e5\u672c\u8a9e\u65e5\u672c\u2026", 11)
    assert mp._fit("abc" * 40, 20) == ("abcabcabcabcabcab...", 20)


def test_terminal_display_blanks_out_a_longer_previous_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = Utf8Stream()
    bar = mp.ProgressBar(out, mode="terminal")
    bar(ProcessingEvent(50, "a much longer message than the next one"))
    bar(ProcessingEvent(61, "\u062c\u0627\u0631\u064d"))  # ends in a combining mark
    first, second = out.getvalue().split("\r")[1:]
    assert mp._fit(second, 200)[1] == mp._fit(first, 200)[1]


def test_messages_cannot_forge_log_lines_or_send_escapes():
    out = io.StringIO()
    bar = mp.ProgressBar(out, mode="log")
    bar(ProcessingEvent(40, "step one\n2026-01-01 00:00:00 munsit: done: https://evil\x1b[31m"))
    assert len(out.getvalue().splitlines()) == 1 and "\x1b" not in out.getvalue()


def test_log_display_on_an_ascii_stream_replaces_what_it_cannot_encode():
    out = AsciiStream()
    bar = mp.ProgressBar(out, mode="log")
    bar(ProcessingEvent(40, "\u062a\u0642\u0644\u064a\u0644"))
    bar.finish(DenoiseFailedError("\u062e\u0637\u0623"))
    assert "?????" in out.getvalue() and "failed: ???" in out.getvalue()


def test_a_reused_display_logs_the_second_job_too():
    out = io.StringIO()
    bar = mp.ProgressBar(out, mode="log")
    for _ in range(2):
        bar(ProcessingEvent(50, "half"))
        bar.finish(EXPECTED_DONE)
    assert out.getvalue().count(" 50%  half") == 2


def test_display_mode_follows_the_stream():
    assert mp.ProgressBar(io.StringIO()).mode == "log"
    with pytest.raises(ConfigurationError):
        mp.ProgressBar(mode="fancy")


def test_wait_finishes_a_progress_bar_with_the_outcome(server):
    out = io.StringIO()
    server.serve(stream(processing(50), FAILED))
    with pytest.raises(DenoiseFailedError):
        wait_on(server, on_progress=mp.ProgressBar(out, mode="log"))
    assert out.getvalue().splitlines()[-1].endswith("failed: audio file is corrupt")


def test_log_display_shows_no_control_characters_from_the_server():
    out = Utf8Stream()
    bar = mp.ProgressBar(out, mode="log")
    bar(ProcessingEvent(10, "a\x1b[2Jb"))
    bar.finish(DoneEvent("https://x/\n2026-01-01 00:00:00 munsit: forged\x1b]0;t\x07", JOB))
    bar.note("note\r\nforged")
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert len(text.splitlines()) == 3
    assert all(STAMP.match(line) for line in text.splitlines())


def test_outcome_text_cannot_forge_log_lines():
    out = Utf8Stream()
    mp.ProgressBar(out, mode="log").finish("saved\n2026-01-01 00:00:00 munsit: forged")
    assert len(out.getvalue().splitlines()) == 1


def test_lone_surrogates_in_messages_do_not_break_the_display(tmp_path):
    with open(str(tmp_path / "log.txt"), "w", encoding="utf-8") as out:
        bar = mp.ProgressBar(out, mode="log")
        bar(ProcessingEvent(10, "bad \ud800 text"))
        bar.finish(DoneEvent("https://x/\udfff.wav", JOB))
    text = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert "bad \ufffd text" in text


def test_a_display_whose_stream_fails_ends_quietly_and_the_job_goes_on(server):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    server.serve(stream(processing(10), processing(60), DONE))
    assert wait_on(server, on_progress=mp.ProgressBar(ClosedPipe(), mode="log")) == EXPECTED_DONE


def test_label_prefixes_every_log_line():
    out = Utf8Stream()
    bar = mp.ProgressBar(out, mode="log", label="a.wav")
    bar(ProcessingEvent(10, "x"))
    bar.note("a note")
    bar.finish(DoneEvent("https://x/y.wav", JOB))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(" munsit: a.wav: " in line for line in lines)


def test_four_jobs_in_four_threads_give_four_streams_of_lines():
    out = Utf8Stream()
    lock = threading.Lock()

    class Shared:
        encoding = "utf-8"

        def write(self, text):
            with lock:
                out.write(text)

        def flush(self):
            pass

    def follow(name):
        bar = mp.ProgressBar(Shared(), mode="log", label=name)
        for pct in range(0, 101, 10):
            bar(ProcessingEvent(pct, "step"))
        bar.finish(DoneEvent("https://x/%s" % name, JOB))

    threads = [threading.Thread(target=follow, args=("job-%d" % n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    lines = out.getvalue().splitlines()
    for n in range(4):
        mine = [line for line in lines if " munsit: job-%d: " % n in line]
        assert len(mine) == 12 and mine[-1].endswith("done: https://x/job-%d" % n)
    assert len(lines) == 48


class FakeDisplay:
    """IPython.display, as far as the notebook display uses it."""

    def __init__(self):
        self.shown = []

    def display(self, bundle, raw, display_id):
        self.shown.append(bundle)
        return self

    def update(self, bundle, raw):
        self.shown.append(bundle)


@pytest.fixture
def fake_ipython(monkeypatch):
    fake = FakeDisplay()
    module = type(sys)("IPython.display")
    module.display = fake.display
    monkeypatch.setitem(sys.modules, "IPython.display", module)
    return fake


def test_notebook_display_of_a_download_ends_saying_saved(server, tmp_path, fake_ipython):
    server.serve(file_response(AUDIO))
    target = str(tmp_path / "clean.wav")
    with mp.ProgressBar(mode="notebook") as bar:
        mp.download(
            result_on(server),
            target,
            api_key=KEY,
            base_url=server.base_url,
            on_progress=bar.transfer,
        )
    final = fake_ipython.shown[-1]
    assert "saved " + target in final["text/html"] and "saved" in final["text/plain"]


def test_one_bar_for_wait_then_download_ends_with_the_url_and_the_saved_path(
    server, tmp_path, fake_ipython
):
    done = sse_data({"stage": "done", "url": server.origin + "/files/x.wav", "denoiseId": JOB})
    server.serve(stream(processing(50), done), file_response(AUDIO))
    bar = mp.ProgressBar(mode="notebook")
    result = wait_on(server, on_progress=bar)
    target = str(tmp_path / "x.wav")
    mp.download(result, target, api_key=KEY, base_url=server.base_url, on_progress=bar)
    html = fake_ipython.shown[-1]["text/html"]
    assert "saved " + target in html and 'href="%s/files/x.wav"' % server.origin in html


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,hi", "https://x/\x00y"])
def test_notebook_links_only_to_http_urls(fake_ipython, url):
    mp.ProgressBar(mode="notebook").finish(DoneEvent(url, JOB))
    assert "<a " not in fake_ipython.shown[-1]["text/html"]


def test_notebook_link_to_an_http_url(fake_ipython):
    mp.ProgressBar(mode="notebook").finish(DoneEvent(RESULT_URL, JOB))
    assert '<a href="%s"' % RESULT_URL in fake_ipython.shown[-1]["text/html"]


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def file_response(body, status=200, declared=None, headers=None):
    def script(conn, request, server):
        all_headers = {
            "Content-Type": "audio/wav",
            "Content-Length": str(len(body) if declared is None else declared),
            "Connection": "close",
        }
        all_headers.update(headers or {})
        conn.sendall(head(status, all_headers))
        for start in range(0, len(body), 65536):
            conn.sendall(body[start : start + 65536])

    return script


def result_on(server, name="clean.wav"):
    return DoneEvent(server.origin + "/files/" + name, JOB)


def test_download_writes_the_file_and_reports_bytes(server, tmp_path):
    server.serve(file_response(AUDIO))
    seen = []
    target = str(tmp_path / "out.wav")
    path = mp.download(
        result_on(server),
        target,
        api_key=KEY,
        base_url=server.base_url,
        on_progress=lambda got, total: seen.append((got, total)),
    )
    assert path == target
    assert (tmp_path / "out.wav").read_bytes() == AUDIO
    assert seen[-1] == (len(AUDIO), len(AUDIO))
    assert os.listdir(str(tmp_path)) == ["out.wav"]


def test_download_writes_next_to_the_target_then_renames(server, tmp_path):
    server.serve(file_response(AUDIO))
    during = []
    mp.download(
        result_on(server),
        str(tmp_path / "out.wav"),
        api_key=KEY,
        base_url=server.base_url,
        on_progress=lambda got, total: during.append(sorted(os.listdir(str(tmp_path)))),
    )
    assert during[0][0].startswith(".out.wav.") and during[0][0].endswith(".part")
    assert server.requests[0].headers["accept-encoding"] == "identity"


def test_download_refuses_a_compressed_body_it_did_not_ask_for(server, tmp_path):
    server.serve(file_response(gzip.compress(AUDIO), headers={"Content-Encoding": "gzip"}))
    with pytest.raises(ProtocolError, match="gzip"):
        mp.download(
            result_on(server), str(tmp_path / "x.wav"), api_key=KEY, base_url=server.base_url
        )
    assert os.listdir(str(tmp_path)) == []


def test_download_redirect_that_parsers_read_differently_is_refused(server, tmp_path):
    evil = Server()
    try:
        evil.serve(file_response(AUDIO))
        location = "http://localhost:%d\\@127.0.0.1:%d/files/x.wav" % (evil.port, server.port)
        server.serve(error_response(302, headers={"Location": location}), file_response(AUDIO))
        with pytest.raises(ProtocolError):
            mp.download(
                result_on(server), str(tmp_path / "x.wav"), api_key=KEY, base_url=server.base_url
            )
        time.sleep(0.2)
        assert evil.requests == []
    finally:
        evil.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/x.wav", "http://[::1/x.wav", "http://a b/"]
)
def test_download_of_a_malformed_url_is_a_protocol_error(tmp_path, url):
    with pytest.raises(ProtocolError):
        mp.download(DoneEvent(url, JOB), str(tmp_path / "x.wav"), api_key=KEY)


def test_download_cut_short_leaves_nothing_behind(server, tmp_path):
    (tmp_path / "out.wav").write_bytes(b"the previous file")
    server.serve(file_response(AUDIO[:100000], declared=len(AUDIO)))
    with pytest.raises(TransportError):
        mp.download(
            result_on(server),
            str(tmp_path / "out.wav"),
            api_key=KEY,
            base_url=server.base_url,
            retry=FAST,
        )
    assert (tmp_path / "out.wav").read_bytes() == b"the previous file"
    assert os.listdir(str(tmp_path)) == ["out.wav"]


def test_download_http_error_is_an_api_error_and_writes_nothing(server, tmp_path):
    server.serve(error_response(404, b'{"message":"gone"}'))
    with pytest.raises(APIError) as info:
        mp.download(
            result_on(server), str(tmp_path / "out.wav"), api_key=KEY, base_url=server.base_url
        )
    assert not isinstance(info.value, JobNotFoundError)
    assert os.listdir(str(tmp_path)) == []


def test_download_sends_the_key_only_to_the_api_origin(server, tmp_path):
    cdn = Server()
    try:
        cdn.serve(file_response(AUDIO))
        server.serve(file_response(AUDIO))
        cdn_result = DoneEvent("http://localhost:%d/files/a.wav" % cdn.port, JOB)
        mp.download(cdn_result, str(tmp_path / "a.wav"), api_key=KEY, base_url=server.base_url)
        mp.download(
            result_on(server), str(tmp_path / "b.wav"), api_key=KEY, base_url=server.base_url
        )
        assert "x-api-key" not in cdn.requests[0].headers
        assert server.requests[0].headers["x-api-key"] == KEY
    finally:
        cdn.close()


def test_download_follows_a_redirect_to_a_cdn_without_the_key(server, tmp_path):
    cdn = Server()
    try:
        cdn.serve(file_response(AUDIO))
        location = "http://localhost:%d/signed/a.wav" % cdn.port
        server.serve(error_response(302, headers={"Location": location}))
        mp.download(
            result_on(server), str(tmp_path / "a.wav"), api_key=KEY, base_url=server.base_url
        )
        assert server.requests[0].headers["x-api-key"] == KEY
        assert "x-api-key" not in cdn.requests[0].headers
        assert (tmp_path / "a.wav").read_bytes() == AUDIO
    finally:
        cdn.close()


def ranged_file(body, etag='"v1"', drop_at=None, ranges=True, last_modified=None):
    """A file server that honours Range (and If-Range) when ``ranges``, and
    drops the connection after ``drop_at`` bytes of the file have gone out
    in all, once per offset in the list ``drop_at``."""
    drops = list(drop_at or [])

    def script(conn, request, server):
        start = 0
        wanted = request.headers.get("range")
        validator = request.headers.get("if-range")
        fresh = validator is None or validator in (etag, last_modified)
        headers = {"Content-Type": "audio/wav", "Connection": "close"}
        if etag:
            headers["ETag"] = etag
        if last_modified:
            headers["Last-Modified"] = last_modified
        if ranges and wanted and fresh:
            start = int(wanted.split("=")[1].split("-")[0])
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, len(body) - 1, len(body))
            status = 206
        else:
            status = 200
        part = body[start:]
        headers["Content-Length"] = str(len(part))
        conn.sendall(head(status, headers))
        stop = len(part)
        while drops and drops[0] <= start:
            drops.pop(0)
        if drops:
            stop = drops.pop(0) - start
        conn.sendall(part[:stop])

    return script


@pytest.mark.parametrize("ranges", [True, False])
def test_download_resumes_across_drops_at_many_offsets(server, tmp_path, ranges):
    offsets = [1, 4095, 65536, 100001, 300000, 511999]
    server.serve(ranged_file(AUDIO, drop_at=offsets, ranges=ranges))
    seen = []
    target = str(tmp_path / "out.wav")
    mp.download(
        result_on(server),
        target,
        api_key=KEY,
        base_url=server.base_url,
        retry=RetryPolicy(backoff_max=0.01),
        on_progress=lambda got, total: seen.append(got),
    )
    assert (tmp_path / "out.wav").read_bytes() == AUDIO
    assert os.listdir(str(tmp_path)) == ["out.wav"]
    ranged = [r.headers.get("range") for r in server.requests]
    if ranges:
        assert ranged == [None] + ["bytes=%d-" % offset for offset in offsets]
        assert all(r.headers.get("if-range") == '"v1"' for r in server.requests[1:])
    else:  # the server answers 200: each attempt starts again from zero
        assert 0 in seen[1:]


def test_download_resumes_with_last_modified_when_the_etag_is_weak(server, tmp_path):
    stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
    server.serve(ranged_file(AUDIO, etag='W/"weak"', drop_at=[1000], last_modified=stamp))
    mp.download(
        result_on(server),
        str(tmp_path / "o.wav"),
        api_key=KEY,
        base_url=server.base_url,
        retry=FAST,
    )
    assert server.requests[1].headers["if-range"] == stamp
    assert (tmp_path / "o.wav").read_bytes() == AUDIO


def test_download_starts_again_when_the_file_changed_between_attempts(server, tmp_path):
    changed = bytes(reversed(AUDIO))
    server.serve(ranged_file(AUDIO, drop_at=[200000]), ranged_file(changed, etag='"v2"'))
    mp.download(
        result_on(server),
        str(tmp_path / "o.wav"),
        api_key=KEY,
        base_url=server.base_url,
        retry=FAST,
    )
    assert (tmp_path / "o.wav").read_bytes() == changed


def test_download_gives_up_on_a_server_that_always_drops_at_the_same_place(server, tmp_path):
    def script(conn, request, server):
        conn.sendall(
            head(200, {"Content-Length": str(len(AUDIO)), "Connection": "close"}) + AUDIO[:1000]
        )

    server.serve(script)
    with pytest.raises(TransportError):
        mp.download(
            result_on(server),
            str(tmp_path / "o.wav"),
            api_key=KEY,
            base_url=server.base_url,
            retry=RetryPolicy(max_retries=3, backoff_max=0.01),
        )
    assert len(server.requests) == 4
    assert os.listdir(str(tmp_path)) == []


def test_download_stops_at_max_size_without_a_content_length(server, tmp_path):
    def script(conn, request, server):
        conn.sendall(head(200, {"Connection": "close"}))
        for _ in range(100):
            conn.sendall(b"\0" * 65536)

    server.serve(script)
    with pytest.raises(ProtocolError, match="max_size"):
        mp.download(
            result_on(server),
            str(tmp_path / "o.wav"),
            api_key=KEY,
            base_url=server.base_url,
            max_size=1_000_000,
        )
    assert os.listdir(str(tmp_path)) == []


def test_download_refuses_a_declared_size_over_max_size_before_writing(server, tmp_path):
    server.serve(file_response(AUDIO))
    with pytest.raises(ProtocolError, match="max_size"):
        mp.download(
            result_on(server),
            str(tmp_path / "o.wav"),
            api_key=KEY,
            base_url=server.base_url,
            max_size=1000,
            on_progress=lambda got, total: pytest.fail("wrote bytes"),
        )


def test_a_redirect_back_to_the_api_origin_does_not_get_the_key(server, tmp_path):
    cdn = Server()
    try:
        back = server.origin + "/files/x.wav"
        cdn.serve(error_response(302, headers={"Location": back}))
        server.serve(file_response(AUDIO))
        done = DoneEvent("http://localhost:%d/a.wav" % cdn.port, JOB)
        mp.download(done, str(tmp_path / "a.wav"), api_key=KEY, base_url=server.base_url)
        assert "x-api-key" not in cdn.requests[0].headers
        assert "x-api-key" not in server.requests[0].headers
        assert (tmp_path / "a.wav").read_bytes() == AUDIO
    finally:
        cdn.close()


def test_plain_http_result_is_refused_while_the_api_is_https(server, tmp_path):
    server.serve(file_response(AUDIO))
    done = DoneEvent(server.origin + "/files/x.wav", JOB)
    with pytest.raises(ProtocolError, match="allow_http"):
        mp.download(done, str(tmp_path / "x.wav"), api_key=KEY, base_url="https://api.example")
    assert_nothing_sent(server)
    mp.download(done, str(tmp_path / "x.wav"), base_url="https://api.example", allow_http=True)
    assert (tmp_path / "x.wav").read_bytes() == AUDIO


def test_a_redirect_from_https_to_http_is_refused(server, tls_server, tmp_path):
    tls_server.serve(error_response(302, headers={"Location": server.origin + "/x.wav"}))
    server.serve(file_response(AUDIO))
    done = DoneEvent(tls_server.origin + "/x.wav", JOB)
    with pytest.raises(ProtocolError, match="allow_http"):
        mp.download(done, str(tmp_path / "x.wav"), base_url="https://api.example", timeout=5)
    assert len(tls_server.requests) == 1
    assert_nothing_sent(server)


def test_tls_download_follows_an_https_redirect(tls_server, tmp_path):
    tls_server.serve(error_response(302, headers={"Location": "/y.wav"}), file_response(AUDIO))
    done = DoneEvent(tls_server.origin + "/x.wav", JOB)
    mp.download(done, str(tmp_path / "x.wav"), base_url="https://api.example", timeout=10)
    assert (tmp_path / "x.wav").read_bytes() == AUDIO


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://x/y.wav", "data:audio/wav;base64,AAAA"]
)
def test_result_urls_that_are_not_http_are_protocol_errors(tmp_path, url):
    with pytest.raises(ProtocolError):
        mp.download(DoneEvent(url, JOB), str(tmp_path / "x.wav"), api_key=KEY)


def test_download_content_length_with_a_non_ascii_digit_is_not_a_crash(server, tmp_path):
    def script(conn, request, server):
        # \xb2 is "²" in Latin-1, as http.client reads headers: a digit to isdigit().
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n" + AUDIO
        )

    server.serve(script)
    try:
        mp.download(
            result_on(server), str(tmp_path / "x.wav"), api_key=KEY, base_url=server.base_url
        )
    except MunsitError:
        pass


def device_node(folder):
    """A character device (the null device's numbers) made in ``folder``.

    Never the real /dev/null: a download that regressed to replacing what
    it is given would replace the machine's own device, as root."""
    path = str(folder / "null-device")
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (OSError, AttributeError):
        pytest.skip("cannot make a device node here (needs root)")
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX")
@pytest.mark.parametrize("kind", ["device", "fifo", "folder", "link-to-a-fifo"])
def test_download_refuses_what_is_not_a_regular_file(server, tmp_path, kind):
    if kind == "device":
        target = device_node(tmp_path)
    elif kind == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    elif kind == "folder":
        target = str(tmp_path)
    else:
        target = str(tmp_path / "link")
        os.mkfifo(str(tmp_path / "fifo"))
        os.symlink(str(tmp_path / "fifo"), target)
    server.serve(file_response(AUDIO))
    with pytest.raises(ConfigurationError):
        mp.download(result_on(server), target, api_key=KEY, base_url=server.base_url)
    assert_nothing_sent(server)


def test_download_writes_through_a_symlink_to_a_regular_file(server, tmp_path):
    (tmp_path / "real.wav").write_bytes(b"old")
    os.symlink("real.wav", str(tmp_path / "latest.wav"))
    server.serve(file_response(AUDIO))
    mp.download(
        result_on(server), str(tmp_path / "latest.wav"), api_key=KEY, base_url=server.base_url
    )
    assert os.path.islink(str(tmp_path / "latest.wav"))
    assert (tmp_path / "real.wav").read_bytes() == AUDIO


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_download_keeps_the_permission_bits_of_the_file_it_replaces(server, tmp_path):
    target = tmp_path / "private.wav"
    target.write_bytes(b"old")
    os.chmod(str(target), 0o600)
    server.serve(file_response(AUDIO))
    mp.download(result_on(server), str(target), api_key=KEY, base_url=server.base_url)
    assert oct(os.stat(str(target)).st_mode & 0o777) == oct(0o600)


def test_download_to_a_long_name_works_and_a_too_long_one_fails_before_any_request(
    server, tmp_path
):
    server.serve(file_response(AUDIO))
    long_name = "a" * 250 + ".wav"
    mp.download(result_on(server), str(tmp_path / long_name), api_key=KEY, base_url=server.base_url)
    assert (tmp_path / long_name).read_bytes() == AUDIO
    server.serve(file_response(AUDIO))
    with pytest.raises(ConfigurationError, match="too long|longer than"):
        mp.download(
            result_on(server), str(tmp_path / ("b" * 300)), api_key=KEY, base_url=server.base_url
        )
    assert_nothing_sent(server)


# --------------------------------------------------------------------------
# One call: denoise()
# --------------------------------------------------------------------------


def denoise_on(server, path, output=None, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", server.base_url)
    kwargs.setdefault("retry", QUICK)
    return mp.denoise(path, output, **kwargs)


def test_denoise_uploads_follows_and_saves(server, audio_file, tmp_path):
    api = FakeAPI("ok")
    server.serve(api)
    out = Utf8Stream()
    done = denoise_on(
        server, audio_file, str(tmp_path / "clean.wav"), on_progress=mp.ProgressBar(out, mode="log")
    )
    assert done.denoise_id == api.jobs[0]["id"]
    assert (tmp_path / "clean.wav").read_bytes() == AUDIO
    text = out.getvalue()
    for step in (
        "uploading",
        "50%  working",
        "done: ",
        "downloading",
        "saved %s" % (tmp_path / "clean.wav"),
    ):
        assert step in text, text
    assert text.index("uploading") < text.index("working") < text.index("downloading")


def test_denoise_without_output_returns_the_done_event(server, audio_file):
    server.serve(FakeAPI("ok"))
    seen = []
    done = denoise_on(server, audio_file, on_progress=seen.append)
    assert done.url.endswith(".wav") and [event.pct for event in seen] == [50]


def test_denoise_checks_the_output_before_paying(server, audio_file, tmp_path):
    server.serve(FakeAPI("ok"))
    with pytest.raises(ConfigurationError):
        denoise_on(server, audio_file, str(tmp_path / "no-such-folder" / "x.wav"))
    assert_nothing_sent(server)


def stall_in(phase):
    """A FakeAPI whose given phase goes silent."""
    if phase == "answer":
        return FakeAPI("hang")
    if phase == "processing":
        return FakeAPI("ok", progress=stream(processing(10), hold_for=20, end="cut"))
    if phase == "download":
        api = FakeAPI("ok")

        def serve(conn, request, server):
            if request.path.startswith("/files/"):
                conn.sendall(head(200, {"Content-Length": str(len(AUDIO))}) + AUDIO[:1000])
                hold(conn, server, 20)
            else:
                FakeAPI.__call__(api, conn, request, server)

        api.serve = serve
        return api
    raise AssertionError(phase)


@pytest.mark.parametrize("phase", ["upload", "answer", "processing", "download"])
def test_denoise_keeps_one_deadline_through_every_phase(server, tmp_path, phase):
    path = tmp_path / "big.wav"
    if phase == "upload":
        with open(str(path), "wb") as out:
            out.truncate(64 * 1024 * 1024)  # more than the socket buffers hold

        def never_reads(conn, request, srv):
            end = time.monotonic() + 10
            while time.monotonic() < end and not srv.client_closed.is_set():
                time.sleep(0.05)  # no recv: the client's sends must block

        server.serve(never_reads)
    else:
        path.write_bytes(mp._demo_wav())
        api = stall_in(phase)
        server.serve(getattr(api, "serve", api))
    started = time.monotonic()
    with pytest.raises(MunsitError) as info:
        denoise_on(server, str(path), str(tmp_path / "out.wav"), timeout=2, check=False)
    assert time.monotonic() - started < 3.5
    if phase in ("processing", "download"):
        assert isinstance(info.value, WaitTimeoutError)
        job = info.value.denoise_id
        assert job is not None and job in str(info.value)
    elif phase == "answer":
        assert isinstance(info.value, mp.SubmissionUnknownError)
    else:
        assert isinstance(info.value, WaitTimeoutError) and info.value.denoise_id is None
    assert not (tmp_path / "out.wav").exists()


def test_a_failed_job_carries_its_denoise_id(server, audio_file):
    api = FakeAPI("ok", progress=stream(FAILED))
    server.serve(api)
    with pytest.raises(DenoiseFailedError) as info:
        denoise_on(server, audio_file)
    assert info.value.denoise_id == api.jobs[0]["id"] and api.jobs[0]["id"] in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.denoise_id == info.value.denoise_id and str(again) == str(info.value)


def test_demo_server_takes_uploads_lists_them_and_serves_the_result(tmp_path, audio_file):
    with mp.demo_server(duration=0.5) as base_url:
        done = mp.denoise(
            audio_file, str(tmp_path / "clean.wav"), api_key="demo", base_url=base_url
        )
        jobs = mp.list_jobs(api_key="demo", base_url=base_url)
    assert (tmp_path / "clean.wav").read_bytes() == open(audio_file, "rb").read()
    assert [job.denoise_id for job in jobs] == [done.denoise_id]
    assert jobs[0].file_name == tagged("interview.wav", audio_file)
    assert jobs[0].status == "success"
    assert jobs[0].audio_size == os.path.getsize(audio_file)


def test_demo_server_forgets_its_jobs_unless_given_a_state_dir(tmp_path, audio_file):
    with mp.demo_server(duration=0.3) as base_url:
        mp.submit(audio_file, api_key="demo", base_url=base_url)
    with mp.demo_server(duration=0.3) as base_url:
        assert mp.list_jobs(api_key="demo", base_url=base_url) == []
    kept = str(tmp_path / "kept")
    with mp.demo_server(duration=0.3, state_dir=kept) as base_url:
        job = mp.submit(audio_file, api_key="demo", base_url=base_url).denoise_id
    with mp.demo_server(duration=0.3, state_dir=kept) as base_url:
        assert [j.denoise_id for j in mp.list_jobs(api_key="demo", base_url=base_url)] == [job]
        done = mp.wait(job, api_key="demo", base_url=base_url)
        mp.download(done, str(tmp_path / "out.wav"), api_key="demo", base_url=base_url)
    assert (tmp_path / "out.wav").read_bytes() == open(audio_file, "rb").read()


def test_demo_servers_sharing_a_state_dir_at_once_see_each_other_s_jobs(tmp_path):
    kept = str(tmp_path / "kept")
    paths = make_inputs(tmp_path / "in", 6)
    with mp.demo_server(duration=0.3, state_dir=kept) as one, mp.demo_server(
        duration=0.3, state_dir=kept
    ) as two:
        sent = []

        def send(path, base_url):
            sent.append(mp.submit(path, api_key="demo", base_url=base_url).denoise_id)

        threads = [
            threading.Thread(target=send, args=(path, (one, two)[index % 2]))
            for index, path in enumerate(paths)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(sent) == 6
        for base_url in (one, two):
            listed = mp.list_jobs(api_key="demo", base_url=base_url)
            assert sorted(job.denoise_id for job in listed) == sorted(sent)


def test_a_demo_state_dir_keeps_the_newest_jobs_only(tmp_path, audio_file, monkeypatch):
    monkeypatch.setattr(mp, "_DEMO_KEEP_JOBS", 3)
    kept = tmp_path / "kept"
    with mp.demo_server(duration=0.3, state_dir=str(kept)) as base_url:
        sent = [
            mp.submit(audio_file, api_key="demo", base_url=base_url, reuse=False).denoise_id
            for _ in range(5)
        ]
        listed = mp.list_jobs(api_key="demo", base_url=base_url)
    assert [job.denoise_id for job in listed] == sent[:1:-1]
    assert sorted(os.listdir(str(kept))) == sorted(sent[2:] + ["jobs.json", "lock"])


def test_demo_server_refuses_a_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(mp.ConfigurationError):
        with mp.demo_server(state_dir=str(tmp_path / "file")):
            pass


def test_demo_server_refuses_a_file_over_its_limit_with_the_documented_body(tmp_path):
    (tmp_path / "big.wav").write_bytes(os.urandom(300_000))
    with mp.demo_server(max_upload=100_000) as base_url:
        with pytest.raises(APIError) as info:
            mp.submit(str(tmp_path / "big.wav"), api_key="demo", base_url=base_url, check=False)
        assert mp.list_jobs(api_key="demo", base_url=base_url) == []
    assert info.value.status_code == 400
    assert info.value.error_message.startswith(
        "File size exceeds the maximum limit of 200MB. File size:"
    )


def test_demo_server_lists_pending_then_success_with_offset_and_limit(tmp_path, audio_file):
    with mp.demo_server(duration=1.0) as base_url:
        first = mp.submit(audio_file, api_key="demo", base_url=base_url)
        second = mp.submit(audio_file, api_key="demo", base_url=base_url, reuse=False)
        again = mp.submit(audio_file, api_key="demo", base_url=base_url)
        assert not first.adopted and not second.adopted
        assert again.adopted and again.denoise_id == second.denoise_id  # the newest
        pending = mp.list_jobs(api_key="demo", base_url=base_url)
        assert [job.denoise_id for job in pending] == [second.denoise_id, first.denoise_id]
        assert {job.status for job in pending} == {"pending"}
        assert [
            j.denoise_id for j in mp.list_jobs(limit=1, offset=1, api_key="demo", base_url=base_url)
        ] == [first.denoise_id]
        mp.wait(second.denoise_id, api_key="demo", base_url=base_url)
        assert mp.list_jobs(limit=1, api_key="demo", base_url=base_url)[0].status == "success"


# --------------------------------------------------------------------------
# A folder of files: denoise_many() and its journal
# --------------------------------------------------------------------------


def make_inputs(folder, count, prefix="in"):
    """``count`` small distinct audio files in ``folder``; their paths."""
    folder.mkdir(exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / ("%s%d.wav" % (prefix, index))
        path.write_bytes(mp._demo_wav()[:2000] + os.urandom(500 + index))
        paths.append(str(path))
    return paths


def many_on(server, paths, output, **kwargs):
    kwargs.setdefault("api_key", KEY)
    kwargs.setdefault("base_url", server.base_url)
    kwargs.setdefault("retry", QUICK)
    return list(mp.denoise_many(paths, str(output), **kwargs))


def write_sending(folder, identity, name=None, age=5.0):
    """What a run killed after its POST leaves in the journal: a 'sending'
    line and no answer, ``age`` seconds ago."""
    journal = mp._Journal(str(folder))
    try:
        fields = {"file": name} if name is not None else {}
        journal.record_all([("sending", identity, fields)], at=time.time() - age)
    finally:
        journal.close()


def journal_of(folder):
    """The journal's steps, oldest first, as 0.4's JSON lines said them."""
    view = mp._JournalView.reading(str(folder))
    try:
        return list(view.records())
    finally:
        view.close()


def old_journal_line(event, path, **fields):
    """A line of 0.4's JSON-lines journal about the file at ``path``."""
    data = open(path, "rb").read()
    record = {"event": event, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    record.update(fields)
    record.setdefault("at", time.time() - 60)
    return (json.dumps(record) + "\n").encode()


def test_batch_saves_each_result_under_its_input_name(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 5)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    results = many_on(server, paths, tmp_path / "out", concurrency=3)
    assert sorted(r.path for r in results) == sorted(paths)
    for result in results:
        assert result.error is None and not result.skipped
        assert result.output == str(tmp_path / "out" / os.path.basename(result.path))
        assert open(result.output, "rb").read() == open(result.path, "rb").read()
    assert api.posts_by_name() == {os.path.basename(p): 1 for p in paths}
    events = [(line["event"], line.get("file")) for line in journal_of(tmp_path / "out")]
    for path in paths:
        name = os.path.basename(path)
        mine = [
            e
            for e in journal_of(tmp_path / "out")
            if e.get("file") == name or e.get("output") == name
        ]
        assert [e["event"] for e in mine] == ["sending", "saved"]
    assert len(events) == 15  # sending, submitted, saved for each


def test_a_second_run_skips_what_is_saved_and_sends_nothing(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    again = many_on(server, paths, tmp_path / "out")
    assert all(r.skipped and r.error is None for r in again)
    assert len(api.posts) == 3


def test_a_renamed_input_is_recognised_by_its_content(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    first = many_on(server, paths, tmp_path / "out")[0]
    renamed = str(tmp_path / "in" / "renamed.wav")
    os.rename(paths[0], renamed)
    result = many_on(server, [renamed], tmp_path / "out")[0]
    assert len(api.posts) == 1  # followed the known job, not uploaded again
    assert result.denoise_id == first.denoise_id and not result.skipped
    assert open(result.output, "rb").read() == open(renamed, "rb").read()


def test_an_input_whose_content_changed_is_a_new_input(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    earlier = (tmp_path / "out" / "in0.wav").read_bytes()
    with open(paths[0], "ab") as handle:
        handle.write(b"more")
    # Its output holds the old content's paid-for result: not replaced, and
    # nothing sent until it is moved away.
    refused = many_on(server, paths, tmp_path / "out")[0]
    assert isinstance(refused.error, mp.ConfigurationError)
    assert "move that result away" in str(refused.error)
    assert len(api.posts) == 1 and (tmp_path / "out" / "in0.wav").read_bytes() == earlier
    os.rename(str(tmp_path / "out" / "in0.wav"), str(tmp_path / "out" / "in0.old.wav"))
    result = many_on(server, paths, tmp_path / "out")[0]
    assert len(api.posts) == 2 and not result.skipped
    assert open(result.output, "rb").read() == open(paths[0], "rb").read()


def test_inputs_with_the_same_content_share_one_job(server, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF" + b"x" * 3000)
    (folder / "b.wav").write_bytes(b"RIFF" + b"x" * 3000)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    results = many_on(
        server, [str(folder / "a.wav"), str(folder / "b.wav")], tmp_path / "out", check=False
    )
    assert len(api.posts) == 1
    assert {os.path.basename(r.output) for r in results} == {"a.wav", "b.wav"}


def write_old_journal(tmp_path, paths):
    """0.4's journal in out/: paths[0] saved as in0.wav, a torn last line."""
    (tmp_path / "out").mkdir()
    job = "5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1"
    shutil.copy(paths[0], str(tmp_path / "out" / "in0.wav"))
    data = b'{"journal": "munsit-progress batch", "version": 1}\n'
    data += old_journal_line("sending", paths[0], file="in0.wav")
    data += old_journal_line("submitted", paths[0], denoiseId=job)
    data += old_journal_line("saved", paths[0], denoiseId=job, output="in0.wav")
    data += b'{"event": "sending", "sha256": "ab'  # killed mid-write
    (tmp_path / "out" / ".munsit-batch.jsonl").write_bytes(data)
    return job, data


def test_an_old_json_lines_journal_with_a_torn_last_line_is_imported_once(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    job, data = write_old_journal(tmp_path, paths)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    results = sorted(many_on(server, paths, tmp_path / "out"), key=lambda r: r.path)
    assert [(r.skipped, r.denoise_id == job) for r in results] == [(True, True), (False, False)]
    assert len(api.posts) == 1
    assert not (tmp_path / "out" / ".munsit-batch.jsonl").exists()
    assert (tmp_path / "out" / ".munsit-batch.jsonl.imported").read_bytes() == data
    steps = [(r["event"], r.get("file") or r.get("output")) for r in journal_of(tmp_path / "out")]
    assert steps[:3] == [("sending", "in0.wav"), ("submitted", None), ("saved", "in0.wav")]
    again = many_on(server, paths, tmp_path / "out")  # imported once: nothing twice
    assert all(r.skipped for r in again) and len(journal_of(tmp_path / "out")) == 6


def test_an_old_journal_written_again_after_the_import_is_imported_too(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    write_old_journal(tmp_path, paths)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths[:1], tmp_path / "out")
    # A 0.4 run in the same folder since: its lines are new, and kept.
    job = "6c2e3f8a-4a92-4d3b-8e6d-8b3fa2c5d8b2"
    shutil.copy(paths[1], str(tmp_path / "out" / "in1.wav"))
    data = old_journal_line("saved", paths[1], denoiseId=job, output="in1.wav")
    (tmp_path / "out" / ".munsit-batch.jsonl").write_bytes(data)
    results = sorted(many_on(server, paths, tmp_path / "out"), key=lambda r: r.path)
    assert all(r.skipped for r in results) and results[1].denoise_id == job
    assert len(api.posts) == 0
    assert (tmp_path / "out" / ".munsit-batch.jsonl.imported.2").read_bytes() == data


def test_a_dry_run_reads_an_old_journal_without_importing_it(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    _, data = write_old_journal(tmp_path, paths)
    server.serve(FakeAPI("ok"))
    result = batch_cli(server, paths, tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["skip", "send"]
    assert (tmp_path / "out" / ".munsit-batch.jsonl").read_bytes() == data
    assert sorted(os.listdir(str(tmp_path / "out"))) == [".munsit-batch.jsonl", "in0.wav"]


def aged(paths, seconds=60):
    """Date files ``seconds`` back: the journal does not trust the stat of
    a file written moments ago (it may change again within its mtime's
    granularity), and a night's inputs are older than that."""
    for path in paths:
        status = os.stat(path)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns - seconds * 10**9))


def count_reads(monkeypatch):
    """The inputs opened, and those hashed, from now on."""
    opened, hashed = [], []
    open_source, identify = mp._Source.__init__, mp._Source.identify

    def counting_open(self, path, check):
        opened.append(os.path.basename(path))
        open_source(self, path, check)

    def counting_identify(self, check):
        if self.content is None:
            hashed.append(self.name)
        return identify(self, check)

    monkeypatch.setattr(mp._Source, "__init__", counting_open)
    monkeypatch.setattr(mp._Source, "identify", counting_identify)
    return opened, hashed


def test_a_rerun_does_not_read_saved_unchanged_inputs(server, tmp_path, monkeypatch):
    paths = make_inputs(tmp_path / "in", 3)
    aged(paths)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    opened, hashed = count_reads(monkeypatch)
    again = many_on(server, paths, tmp_path / "out")
    assert all(r.skipped and r.error is None and r.denoise_id for r in again)
    assert opened == [] and hashed == [] and len(api.posts) == 3


def test_a_touched_input_is_hashed_again_known_by_its_content_and_not_paid_again(
    server, tmp_path, monkeypatch
):
    paths = make_inputs(tmp_path / "in", 1)
    aged(paths, 120)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    aged(paths, -60)  # touched: a new mtime, the same content
    opened, hashed = count_reads(monkeypatch)
    assert many_on(server, paths, tmp_path / "out")[0].skipped
    assert hashed == ["in0.wav"] and len(api.posts) == 1
    assert many_on(server, paths, tmp_path / "out")[0].skipped
    assert hashed == ["in0.wav"]  # its new stat is known now


def test_an_input_replaced_by_other_content_of_the_same_size_is_sent(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    aged(paths, 120)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    size = os.path.getsize(paths[0])
    with open(paths[0], "r+b") as handle:
        handle.seek(size - 100)
        handle.write(os.urandom(100))
    aged(paths, 60)  # another mtime, the same size
    os.rename(str(tmp_path / "out" / "in0.wav"), str(tmp_path / "out" / "in0.old.wav"))
    result = many_on(server, paths, tmp_path / "out")[0]
    assert len(api.posts) == 2 and not result.skipped
    assert open(result.output, "rb").read() == open(paths[0], "rb").read()


def test_rehash_reads_every_input(server, tmp_path, monkeypatch):
    paths = make_inputs(tmp_path / "in", 2)
    aged(paths)
    server.serve(FakeAPI("ok", echo=True))
    many_on(server, paths, tmp_path / "out")
    _, hashed = count_reads(monkeypatch)
    again = many_on(server, paths, tmp_path / "out", rehash=True)
    assert all(r.skipped for r in again) and sorted(hashed) == ["in0.wav", "in1.wav"]


def test_a_file_written_moments_ago_is_hashed_again_next_time(server, tmp_path, monkeypatch):
    paths = make_inputs(tmp_path / "in", 1)  # its mtime is now: racily clean, as git says
    server.serve(FakeAPI("ok", echo=True))
    many_on(server, paths, tmp_path / "out")
    _, hashed = count_reads(monkeypatch)
    assert many_on(server, paths, tmp_path / "out")[0].skipped
    assert hashed == ["in0.wav"]


def test_a_post_sent_without_a_recorded_answer_is_looked_up_not_resent(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    # What a run killed after its POST left: the job exists, the journal
    # says only "sending".
    job = submit_to(server, paths[0])
    identity = mp._Source(paths[0], True).identify(lambda: None)
    (tmp_path / "out").mkdir()
    write_sending(tmp_path / "out", identity)
    result = many_on(server, paths, tmp_path / "out")[0]
    assert result.denoise_id == job.denoise_id and len(api.posts) == 1
    assert "GET" in [r.method for r in server.requests if r.path.startswith("/api/v1/denoise?")]


def test_colliding_outputs_are_refused_before_any_upload(server, tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.wav").write_bytes(b"RIFF....")
    (tmp_path / "a.mp3").write_bytes(b"ID3.....")
    server.serve(FakeAPI("ok"))
    for paths in (["x/a.wav", "y/a.wav"], ["x/a.wav", "a.mp3"], ["x/a.wav", "A.mp3"]):
        with pytest.raises(ConfigurationError, match="same name"):
            mp.denoise_many(
                [str(tmp_path / p) for p in paths],
                str(tmp_path / "out"),
                api_key=KEY,
                base_url=server.base_url,
            )
    assert_nothing_sent(server)
    assert not (tmp_path / "out").exists()


def test_the_same_file_given_twice_counts_once(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    results = many_on(
        server, [paths[0], paths[0], str(tmp_path / "in" / "." / "in0.wav")], tmp_path / "out"
    )
    assert len(results) == 1 and len(api.posts) == 1


@pytest.mark.parametrize(
    "text, size",
    [
        ("1000", 1000),
        ("500M", 500_000_000),
        ("2G", 2_000_000_000),
        ("1.5GB", 1_500_000_000),
        ("300MiB", 300 * 1024**2),
        ("10k", 10_000),
    ],
)
def test_sizes_are_read_in_bytes_with_decimal_and_binary_units(text, size):
    assert mp._parse_size(text) == size


@pytest.mark.parametrize("text", ["", "ten", "5X", "-1M"])
def test_sizes_that_are_not_sizes_are_configuration_errors(text):
    with pytest.raises(ConfigurationError):
        mp._parse_size(text)


def test_the_batch_status_is_the_most_serious_in_a_fixed_order():
    def result(error=None, skipped=False):
        return mp.FileResult("x.wav", error=error, skipped=skipped)

    failed = DenoiseFailedError("bad")
    gave_up = TransportError("lost")
    refused = mp.PaymentRequiredError(402)
    unsure = mp.SubmissionUnknownError("?")
    assert mp._batch_status([result(), result(skipped=True)]) == 0
    assert mp._batch_status([result(), result(failed)]) == 1
    assert mp._batch_status([result(failed), result(gave_up)]) == 4
    assert mp._batch_status([result(gave_up), result(ProtocolError("x"))]) == 5
    assert mp._batch_status([result(ProtocolError("x")), result(unsure)]) == 6
    assert mp._batch_status([result(unsure), result(ConfigurationError("not audio"))]) == 2
    assert mp._batch_status([result(ConfigurationError("x")), result(refused), result(failed)]) == 3
    assert mp._batch_status([result(mp.NotSubmittedError("cap"))]) == 4
    assert mp._batch_status([result(OSError(28, "No space left"))]) == 4


def test_one_run_at_a_time_per_folder(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    holder = mp._Journal(str(tmp_path / "out"))
    try:
        before = (tmp_path / "out" / mp.JOURNAL_NAME).read_bytes()
        with pytest.raises(mp.BatchBusyError, match="another run"):
            mp.denoise_many(paths, str(tmp_path / "out"), api_key=KEY, base_url=server.base_url)
        assert (tmp_path / "out" / mp.JOURNAL_NAME).read_bytes() == before
    finally:
        holder.close()
    assert_nothing_sent(server)


def test_the_lock_is_released_when_the_iteration_ends(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", echo=True))
    results = mp.denoise_many(paths, str(tmp_path / "out"), api_key=KEY, base_url=server.base_url)
    next(results)
    results.close()
    mp._Journal(str(tmp_path / "out")).close()  # free again


def test_a_429_on_submit_pauses_every_new_upload(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    api = FakeAPI("ok", echo=True)
    second = threading.Event()
    refused = []
    arrivals = itertools.count()  # which POST this is, decided on arrival

    def first_429(conn, request, srv):
        number = next(arrivals) if request.method == "POST" else None
        if number == 0:
            read_body(conn, request)
            api.posts.append((request, None))
            second.wait(10)  # the other upload is on its way before the 429
            refused.append(time.monotonic())
            error_response(429, headers={"Retry-After": "1"})(conn, request, srv)
        else:
            if number is not None:
                second.set()
            api(conn, request, srv)

    server.serve(first_429)
    many_on(server, paths, tmp_path / "out", concurrency=2, retry=FAST)
    posts = [r.at for r in server.requests if r.method == "POST"]
    assert len(posts) == 5 and refused
    # The first two were sent before the 429; every one after waited for it.
    assert all(at >= refused[0] + 0.9 for at in sorted(posts)[2:])


def test_a_402_stops_new_uploads_and_finishes_submitted_jobs(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    slow_done = stream(processing(10), processing(90), delay=0.5)
    api = FakeAPI("ok", "402", echo=True)

    def progress_then_done(conn, request, srv):
        job = request.path.split("/")[-2]
        done = sse_data(
            {"stage": "done", "url": srv.origin + "/files/%s.wav" % job, "denoiseId": job}
        )
        stream(processing(10), processing(90), done, delay=0.5)(conn, request, srv)

    api.progress = progress_then_done
    server.serve(api)
    results = many_on(server, paths, tmp_path / "out", concurrency=1)
    saved = [r for r in results if r.error is None]
    refused = [r for r in results if isinstance(r.error, mp.PaymentRequiredError)]
    assert len(saved) == 1 and len(refused) == 3
    assert len(api.posts) == 2  # the refused one; none after it
    assert mp._batch_status(results) == mp.EXIT_REJECTED
    del slow_done


def test_max_files_and_max_bytes_cap_the_uploads(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 5)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    results = many_on(server, paths, tmp_path / "out", max_files=2, concurrency=1)
    assert len(api.posts) == 2
    assert sum(isinstance(r.error, mp.NotSubmittedError) for r in results) == 3
    assert "max_files" in str(results[-1].error) and "--" not in str(results[-1].error)
    results = many_on(
        server, paths, tmp_path / "out", max_bytes=os.path.getsize(paths[2]), concurrency=1
    )
    assert len(api.posts) == 3
    assert mp._batch_status(results) == mp.EXIT_GAVE_UP


def test_a_failed_job_is_not_sent_again_unless_asked(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    api = FakeAPI("ok", echo=True, by_name={"in0.wav": stream(FAILED)})
    server.serve(api)
    first = {os.path.basename(r.path): r for r in many_on(server, paths, tmp_path / "out")}
    assert isinstance(first["in0.wav"].error, DenoiseFailedError) and first["in1.wav"].error is None
    again = {os.path.basename(r.path): r for r in many_on(server, paths, tmp_path / "out")}
    assert isinstance(again["in0.wav"].error, DenoiseFailedError)
    assert again["in0.wav"].denoise_id == first["in0.wav"].denoise_id
    assert len(api.posts) == 2
    api.by_name = {}
    retried = many_on(server, paths, tmp_path / "out", retry_failed=True)
    assert all(r.error is None for r in retried) and len(api.posts) == 3


def test_a_resend_after_a_failed_job_is_looked_up_if_its_answer_was_lost(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True, by_name={"in0.wav": stream(FAILED)})
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    api.by_name = {}
    # A --retry-failed run killed after its POST was taken, before the answer:
    job = submit_to(server, paths[0], retry_failed=True)
    identity = mp._Source(paths[0], True).identify(lambda: None)
    write_sending(tmp_path / "out", identity)
    result = many_on(server, paths, tmp_path / "out")[0]
    assert result.error is None and result.denoise_id == job.denoise_id
    assert len(api.posts) == 2  # the failed job and the resend: no third


def test_batch_progress_callback_gets_the_path_and_the_event(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", echo=True))
    seen = []
    many_on(
        server,
        paths,
        tmp_path / "out",
        on_progress=lambda path, event: seen.append((path, event.pct)),
    )
    assert sorted(seen) == sorted((p, 50) for p in paths)


def test_batch_log_display_prefixes_lines_with_the_file_then_totals(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    server.serve(FakeAPI("ok", echo=True))
    out = Utf8Stream()
    many_on(
        server, paths, tmp_path / "out", on_progress=mp.ProgressBar(out, mode="log"), concurrency=2
    )
    lines = out.getvalue().splitlines()
    assert all(STAMP.match(line) for line in lines)
    for path in paths:
        name = os.path.basename(path)
        mine = [line for line in lines if " munsit: %s: " % name in line]
        assert any("uploading" in line for line in mine) and mine[-1].endswith(
            "saved %s" % mp._short_path(str(tmp_path / "out" / name))
        )
    assert (
        lines[-1].endswith("3 done, 0 failed, 0 left  0:00")
        or "3 done, 0 failed, 0 left" in lines[-1]
    )


def test_batch_terminal_display_redraws_a_block_in_place(server, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    paths = make_inputs(tmp_path / "in", 3)
    server.serve(FakeAPI("ok", echo=True))
    out = Utf8Stream()
    many_on(
        server,
        paths,
        tmp_path / "out",
        on_progress=mp.ProgressBar(out, mode="terminal"),
        concurrency=2,
    )
    text = out.getvalue()
    assert "\x1b[J" in text and "\x1b[" in text
    final = text.rsplit("\x1b[J", 1)[-1]
    assert "3 done, 0 failed, 0 left" in final or "3 done, 0 failed, 0 left" in text
    for path in paths:
        assert "saved %s" % mp._short_path(str(tmp_path / "out" / os.path.basename(path))) in text


def test_batch_notebook_display_is_one_display_updated(server, tmp_path, fake_ipython):
    paths = make_inputs(tmp_path / "in", 3)
    server.serve(FakeAPI("ok", echo=True))
    many_on(
        server, paths, tmp_path / "out", on_progress=mp.ProgressBar(mode="notebook"), concurrency=2
    )
    final = fake_ipython.shown[-1]
    assert "3 done, 0 failed, 0 left" in final["text/html"]
    assert all(os.path.basename(p) in final["text/html"] for p in paths)


def test_batch_log_has_a_line_per_file_with_its_job_when_it_is_submitted(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    out = Utf8Stream()
    many_on(
        server, paths, tmp_path / "out", on_progress=mp.ProgressBar(out, mode="log"), concurrency=1
    )
    lines = out.getvalue().splitlines()
    assert len(api.jobs) == 2
    for job in api.jobs:
        name = api.name_of(job["id"])
        submitted = [
            n
            for n, line in enumerate(lines)
            if line.endswith(" munsit: %s: submitted as job %s" % (name, job["id"]))
        ]
        saved = [n for n, line in enumerate(lines) if " munsit: %s: saved " % name in line]
        assert len(submitted) == 1 and submitted[0] < saved[0]


def test_batch_totals_count_deferred_and_refused_files_apart_from_failed(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    server.serve(FakeAPI("ok", "400", echo=True))
    out = Utf8Stream()
    results = many_on(
        server,
        paths,
        tmp_path / "out",
        on_progress=mp.ProgressBar(out, mode="log"),
        concurrency=1,
        max_files=2,
    )
    assert sorted(type(result.error).__name__ for result in results) == [
        "APIError",
        "NoneType",
        "NotSubmittedError",
        "NotSubmittedError",
    ]
    assert "1 done, 0 failed, 2 deferred, 1 refused, 0 left" in out.getvalue().splitlines()[-1]


def test_batch_notebook_shows_no_full_bar_for_a_refused_file(server, tmp_path, fake_ipython):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", "400", echo=True))
    many_on(
        server, paths, tmp_path / "out", on_progress=mp.ProgressBar(mode="notebook"), concurrency=1
    )
    rows = fake_ipython.shown[-1]["text/html"].split("<tr>")[1:]
    refused = [row for row in rows if "in1.wav" in row]
    saved = [row for row in rows if "in0.wav" in row]
    assert len(refused) == len(saved) == 1
    assert 'value="100.0"' in saved[0] and 'value="100.0"' not in refused[0]


def terminal_screen(text):
    """The lines a terminal shows after ``text``: carriage returns, line
    feeds, cursor up (ESC [n A) and clear to the end (ESC [J), as the
    terminal display uses them."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[\d*[AJ]|.|\n", text):
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif token.endswith("A"):
            row -= int(token[2:-1] or 1)
        elif token.endswith("J"):
            lines[row] = lines[row][:col]
            del lines[row + 1 :]
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + 1 :]
            col += 1
    return [line.rstrip() for line in lines]


def test_batch_terminal_keeps_notes_and_ended_files_above_the_block(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = io.StringIO()
    bar = mp.ProgressBar(out, mode="terminal")
    display = bar._display(3)
    first, second = display.watch("a.wav"), display.watch("b.wav")
    first.progress(ProcessingEvent(10, "one"))
    second.progress(ProcessingEvent(20, "two"))
    bar.note("reconnecting in 1 s")
    first.ended(DenoiseFailedError("corrupt"))
    second.progress(ProcessingEvent(30, "three"))
    screen = terminal_screen(out.getvalue())
    assert screen[0] == "reconnecting in 1 s"
    assert screen[1].startswith("a.wav  failed: corrupt")
    assert re.match(r"b\.wav  \[#+-+\]  30%  three  0:00$", screen[2])
    assert screen[3].startswith("0 done, 1 failed, 2 left") and len(screen) == 4


def test_leftover_temporary_files_of_a_killed_run_are_swept(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".in0.wav.0123abcd.part").write_bytes(b"half")
    (tmp_path / "out" / "keep.part").write_bytes(b"not ours")
    server.serve(FakeAPI("ok", echo=True))
    many_on(server, paths, tmp_path / "out")
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted(
        [mp.JOURNAL_NAME, mp._LOCK_NAME, "in0.wav", "keep.part"]
    )


def test_a_batch_lists_its_folder_for_leftovers_once_not_at_each_download(
    server, tmp_path, monkeypatch
):
    paths = make_inputs(tmp_path / "in", 3)
    server.serve(FakeAPI("ok", echo=True))
    sweeps = []
    sweep = mp._sweep_temporaries
    monkeypatch.setattr(mp, "_sweep_temporaries", lambda *a: sweeps.append(a) or sweep(*a))
    assert all(r.error is None for r in many_on(server, paths, tmp_path / "out"))
    assert sweeps == [(str(tmp_path / "out"),)]  # a year of results is listed once a night


@pytest.mark.parametrize("tag", [True, False], ids=["by-tag", "by-name-and-size"])
def test_a_batch_rerun_never_adopts_a_sibling_s_job_of_the_same_name_and_size(
    server, tmp_path, tag
):
    (tmp_path / "in").mkdir()
    first = tmp_path / "in" / "x.wav"
    first.write_bytes(b"A" * 500)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    # A run killed after its POST of x.wav was taken: the job exists, the
    # journal says only "sending".  (Untagged, the job the rerun gives the
    # new x.wav is never a candidate for the old one's lookup.)
    submit_to(server, str(first), check=False, tag=tag)
    (tmp_path / "out").mkdir()
    write_sending(tmp_path / "out", mp._Source(str(first), False).identify(lambda: None), "x.wav")
    # Then x.wav was renamed, and another recording of the same size came
    # in under its old name.
    os.rename(str(first), str(tmp_path / "in" / "y.wav"))
    first.write_bytes(b"B" * 500)
    paths = [str(first), str(tmp_path / "in" / "y.wav")]
    results = many_on(server, paths, tmp_path / "out", concurrency=1, check=False, tag=tag)
    assert [r.error for r in results] == [None, None]
    assert sorted(api.uploaded(i) for i in range(len(api.posts))) == [b"A" * 500, b"B" * 500]
    assert (tmp_path / "out" / "x.wav").read_bytes() == b"B" * 500
    assert (tmp_path / "out" / "y.wav").read_bytes() == b"A" * 500


def test_a_later_input_of_the_same_name_never_replaces_an_earlier_paid_result(server, tmp_path):
    for night, content in (("mon", b"monday" * 50), ("tue", b"tuesday" * 50)):
        (tmp_path / night).mkdir()
        (tmp_path / night / "today.wav").write_bytes(content)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    out = tmp_path / "out"
    monday = str(tmp_path / "mon" / "today.wav")
    assert many_on(server, [monday], out, check=False)[0].error is None
    result = batch_cli(server, [str(tmp_path / "tue" / "today.wav")], out, "--no-check")
    assert result.returncode == mp.EXIT_USAGE, result.stderr
    assert "holds the result of another file" in result.stderr
    assert len(api.posts) == 1 and (out / "today.wav").read_bytes() == b"monday" * 50
    again = many_on(server, [monday], out, check=False)[0]
    assert again.skipped and again.output == str(out / "today.wav")
    dry = batch_cli(server, [str(tmp_path / "tue" / "today.wav")], out, "--no-check", "--dry-run")
    assert "refuse" in dry.stdout and "today.wav holds another content" in dry.stdout


def test_a_batch_sweeps_only_the_temporary_files_of_dead_runs(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(b"single" * 100)
    paths = make_inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".old.wav.0123abcd.part"  # left by a killed run: nobody holds it
    dead.write_bytes(b"partial")
    api = FakeAPI("ok", echo=True)
    # Its download is half done, its .part is open.
    thread, caught = denoise_paused_mid_download(
        server, api, tmp_path / "a.wav", out / "single.wav"
    )
    live = [name for name in os.listdir(str(out)) if name.startswith(".single.wav.")]
    assert len(live) == 1
    api.pause_at = None
    batch = mp.denoise_many(paths, str(out), api_key=KEY, base_url=server.base_url, retry=QUICK)
    try:
        assert live[0] in os.listdir(str(out)) and not dead.exists()
    finally:
        api.release.set()
        results = list(batch)
    thread.join(20)
    assert not caught and results[0].error is None
    assert (out / "single.wav").read_bytes() == b"single" * 100


# --------------------------------------------------------------------------
# Demo server
# --------------------------------------------------------------------------


def test_demo_server_runs_a_job_end_to_end_in_python(tmp_path):
    job = "0f8fad5b-d9cb-469f-a165-70867728950e"
    seen = []
    with mp.demo_server(duration=0.5) as base_url:
        done = wait(job, api_key="demo", base_url=base_url, on_progress=seen.append)
        # A finished job replays its final event to a new connection.
        assert list(iter_events(job, api_key="demo", base_url=base_url)) == [done]
        mp.download(done, str(tmp_path / "demo.wav"), api_key="demo", base_url=base_url)
    assert done.denoise_id == job
    assert [event.pct for event in seen] == sorted(event.pct for event in seen)
    assert any(any("\u0600" <= c <= "\u06ff" for c in e.message or "") for e in seen)
    assert (tmp_path / "demo.wav").read_bytes()[:4] == b"RIFF"


def test_demo_server_fails_a_job_when_asked():
    with mp.demo_server(fail=True, duration=0.5) as base_url:
        with pytest.raises(DenoiseFailedError):
            wait(JOB, api_key="demo", base_url=base_url)


def test_demo_server_replays_a_failure_to_a_late_connection():
    with mp.demo_server(fail=True, duration=0.5) as base_url:
        with pytest.raises(DenoiseFailedError):
            wait(JOB, api_key="demo", base_url=base_url)
        assert list(iter_events(JOB, api_key="demo", base_url=base_url))[-1].stage == "error"


def test_demo_server_leaves_no_thread_behind():
    before = threading.active_count()
    with mp.demo_server(duration=0.3) as base_url:
        wait(JOB, api_key="demo", base_url=base_url)
        requests.get(base_url + "/files/x.wav").close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_demo_server_refuses_a_missing_key():
    with mp.demo_server(duration=0.5) as base_url:
        response = requests.get(base_url + "/denoise/%s/progress" % JOB)
    assert response.status_code == 401


# --------------------------------------------------------------------------
# Command line (subprocesses against the loopback server)
# --------------------------------------------------------------------------

MODULE = os.path.abspath(mp.__file__)


_CLI_TEMP = tempfile.mkdtemp(prefix="munsit-test-")
atexit.register(shutil.rmtree, _CLI_TEMP, True)


def run_cli(*args, env=None, stdin=None, timeout=30, module=False, tmpdir=None):
    """Run the CLI; ``stdin`` is text to pipe in, or a file descriptor to
    give the child as its standard input.  Each run has its own temporary
    folder, so that --demo's kept jobs do not leak from test to test; runs
    given the same ``tmpdir`` share them."""
    environment = dict(os.environ)
    environment.pop("MUNSIT_BASE_URL", None)
    environment["MUNSIT_API_KEY"] = KEY
    environment["PYTHONIOENCODING"] = "utf-8"
    environment["MUNSIT_DEMO_SECONDS"] = "0.6"  # --demo's jobs, quick
    folder = str(tmpdir) if tmpdir is not None else tempfile.mkdtemp(dir=_CLI_TEMP)
    environment["TMPDIR"] = environment["TEMP"] = environment["TMP"] = folder
    environment.update(env or {})
    environment = {k: v for k, v in environment.items() if v is not None}
    command = [sys.executable, "-m", "munsit_progress"] if module else [sys.executable, MODULE]
    return subprocess.run(
        command + list(args),
        input=None if isinstance(stdin, int) else stdin,
        stdin=stdin if isinstance(stdin, int) else None,
        capture_output=True,
        env=environment,
        cwd=os.path.dirname(MODULE),
        timeout=timeout,
        text=True,
        encoding="utf-8",
    )


STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def last_line(result):
    """The last stderr line of a CLI run in log mode, its timestamp checked
    and taken off."""
    line = result.stderr.splitlines()[-1]
    assert STAMP.match(line), line
    return STAMP.sub("", line, count=1)


def test_cli_done_prints_only_the_url_on_stdout(server):
    server.serve(stream(processing(40, "تقليل الضوضاء"), DONE))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == RESULT_URL + "\n"
    assert "تقليل الضوضاء" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_connection_failure_is_one_short_line(server):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = run_cli(JOB, "--base-url", "http://127.0.0.1:%d" % port, "--timeout", "2")
    assert result.returncode == 4
    last = last_line(result)
    assert last.startswith("munsit-progress: error: ") and "Max retries" not in result.stderr
    assert len(last) < 200


def test_main_returns_exit_codes_and_leaves_the_process_as_it_was(capsys):
    level = mp.logger.level
    sigterm = signal.getsignal(signal.SIGTERM)
    assert mp.main([]) == 2
    assert mp.main(["--version"]) == 0
    assert mp.main(["not-a-uuid"]) == 2
    assert mp.logger.level == level and not mp.logger.handlers
    assert signal.getsignal(signal.SIGTERM) is sigterm


def test_cli_runs_as_python_dash_m(server):
    server.serve(stream(DONE))
    result = run_cli(JOB, "--quiet", env={"MUNSIT_BASE_URL": server.base_url}, module=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, RESULT_URL + "\n", "")


def test_cli_failed_job_exits_1_with_one_line(server):
    server.serve(stream(processing(5), FAILED))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == mp.EXIT_JOB_FAILED == 1
    assert result.stdout == ""
    assert last_line(result).startswith(
        "munsit-progress: error: denoise job failed: audio file is corrupt [job %s failed" % JOB
    )  # and says how to send the file again: following it only replays this
    assert result.stderr.count("corrupt") == 1  # said once, not by the display too
    assert "Traceback" not in result.stderr


def test_cli_denoise_of_a_job_that_failed_says_so_once(server, audio_file):
    server.serve(FakeAPI("ok", progress=stream(processing(5), FAILED)))
    result = run_cli("denoise", audio_file, "--base-url", server.base_url)
    assert result.returncode == mp.EXIT_JOB_FAILED
    assert result.stderr.count("corrupt") == 1  # by the error line, not by the display too


@pytest.mark.parametrize(
    "args, env",
    [
        (["not-a-uuid"], {}),
        ([JOB], {"MUNSIT_API_KEY": None}),
        ([], {}),
        ([JOB, "--api-key", KEY], {}),
        ([JOB, "--timeout", "-1"], {}),
        ([JOB, "--timeout", "nan"], {}),
        ([JOB, "--api-key-file", "/nonexistent/key"], {"MUNSIT_API_KEY": None}),
        ([JOB, "-o", "/nonexistent/folder/out.wav"], {}),
        ([JOB, "-o", "/"], {}),
        (["not-a-uuid"], {"MUNSIT_API_KEY": None}),
    ],
)
def test_cli_usage_and_configuration_errors_exit_2_and_send_nothing(server, args, env):
    server.serve(stream(DONE))
    result = run_cli(*(args + ["--base-url", server.base_url]), env=env)
    assert result.returncode == mp.EXIT_USAGE == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 5
    assert "Traceback" not in result.stderr
    assert_nothing_sent(server)


@pytest.mark.parametrize("status", [401, 403, 404, 400])
def test_cli_rejection_by_the_api_exits_3(server, status):
    server.serve(error_response(status, b'{"message":"no"}'))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == mp.EXIT_REJECTED == 3
    assert last_line(result).startswith("munsit-progress: error: HTTP %d" % status)
    assert len(server.requests) == 1


def test_cli_deadline_exits_4(server):
    server.serve(stream(processing(5), hold_for=10.0, end="cut"))
    start = time.monotonic()
    result = run_cli(JOB, "--base-url", server.base_url, "--timeout", "0.5")
    assert result.returncode == mp.EXIT_GAVE_UP == 4
    assert time.monotonic() - start < 5.0
    assert "deadline" in result.stderr.splitlines()[-1]


def test_cli_server_that_keeps_failing_exits_4(server):
    server.serve(error_response(503, headers={"Retry-After": "7200"}))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 4
    assert last_line(result).startswith("munsit-progress: error: HTTP 503")


def test_cli_protocol_error_exits_5(server):
    server.serve(stream(b"<html></html>", content_type="text/html"))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == mp.EXIT_PROTOCOL == 5
    assert "text/html" in result.stderr.splitlines()[-1]


def test_cli_json_writes_one_event_per_line(server):
    server.serve(stream(processing(10, "a"), processing(90, "ب"), DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "--json", "--quiet")
    assert result.returncode == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"stage": "processing", "pct": 10, "message": "a"},
        {"stage": "processing", "pct": 90, "message": "ب"},
        {"stage": "done", "url": RESULT_URL, "denoiseId": JOB},
    ]
    assert result.stderr == ""


def test_cli_json_reports_the_error_event(server):
    server.serve(stream(FAILED))
    result = run_cli(JOB, "--base-url", server.base_url, "--json", "--quiet")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"stage": "error", "message": "audio file is corrupt"}


def test_cli_reads_the_key_from_a_file_or_stdin(server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    server.serve(stream(DONE))
    no_env = {"MUNSIT_API_KEY": None}
    result = run_cli(
        JOB, "--base-url", server.base_url, "--api-key-file", str(key_file), env=no_env
    )
    assert result.returncode == 0, result.stderr
    server.serve(stream(DONE))
    result = run_cli(
        JOB, "--base-url", server.base_url, "--api-key-file", "-", stdin=KEY + "\n", env=no_env
    )
    assert result.returncode == 0, result.stderr
    assert server.requests[0].headers["x-api-key"] == KEY


def follow_with_key_on_a_pipe(server, written, timeout):
    """Run the CLI with --api-key-file - on a pipe that stays open, after
    ``written`` was written to it."""
    server.serve(stream(DONE))
    reader, writer = os.pipe()
    os.write(writer, written)
    try:
        return run_cli(
            JOB,
            "--base-url",
            server.base_url,
            "--api-key-file",
            "-",
            "--timeout",
            str(timeout),
            env={"MUNSIT_API_KEY": None},
            stdin=reader,
            timeout=20,
        )
    finally:
        os.close(reader)
        os.close(writer)


@pytest.mark.skipif(not hasattr(os, "O_NONBLOCK"), reason="select on pipes is POSIX")
def test_cli_key_on_a_stdin_nobody_writes_to_is_waited_for_within_the_timeout(server):
    # A cron job's stdin: a pipe that stays open and silent.
    started = time.monotonic()
    result = follow_with_key_on_a_pipe(server, b"", 1)
    assert result.returncode == 2 and "nothing came from standard input" in result.stderr
    assert time.monotonic() - started < 8
    assert server.requests == []


@pytest.mark.skipif(not hasattr(os, "O_NONBLOCK"), reason="select on pipes is POSIX")
def test_cli_key_on_a_stdin_pipe_left_open_is_read_without_waiting_for_its_end(server):
    result = follow_with_key_on_a_pipe(server, (KEY + "\n").encode(), 5)
    assert result.returncode == 0, result.stderr
    assert server.requests[0].headers["x-api-key"] == KEY


def test_cli_log_display_has_no_carriage_returns(server):
    events = [processing(pct, "step %d" % (pct // 25)) for pct in range(0, 100, 5)]
    server.serve(stream(*(events + [DONE])))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 0
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    # A line per 10% step, one per new message (at 25, 50, 75), one for the result.
    shown = [int(line.split("munsit:")[1].split("%")[0]) for line in lines[:-1]]
    assert shown == [0, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90]
    assert lines[-1].endswith("done: " + RESULT_URL)


def run_with_stderr_on_a_pty(args, columns, limit):
    """Run the CLI with stderr on a pseudo-terminal, as an interactive user
    does; its exit status, stdout, and what the terminal received."""
    master, slave = os.openpty()
    environment = dict(
        os.environ, MUNSIT_API_KEY=KEY, COLUMNS=str(columns), PYTHONIOENCODING="utf-8"
    )
    process = subprocess.Popen(
        [sys.executable, MODULE, *args], stdout=subprocess.PIPE, stderr=slave, env=environment
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            piece = os.read(master, 4096)
        except OSError:  # the pty closes when the child exits
            break
        if not piece:
            break
        output += piece
    os.close(master)
    stdout, _ = process.communicate(timeout=10)
    return process.returncode, stdout.decode(), output.decode("utf-8")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_cli_terminal_display_under_a_pty(server):
    server.serve(stream(processing(30, "جارٍ تقليل الضوضاء"), processing(70, "x"), DONE, delay=0.2))
    returncode, stdout, text = run_with_stderr_on_a_pty(
        [JOB, "--base-url", server.base_url], columns=150, limit=20
    )
    assert returncode == 0
    assert stdout == RESULT_URL + "\n"
    assert "جارٍ تقليل الضوضاء" in text
    assert text.count("\r") >= 3 and text.rstrip(" ").endswith("\n")
    assert text.count("\n") == 1 or text.replace("\r\n", "\n").count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_cli_terminal_shows_the_job_id_whole_on_a_line_of_its_own(server, audio_file):
    api = FakeAPI("ok")
    server.serve(api)
    returncode, _, text = run_with_stderr_on_a_pty(
        ["denoise", audio_file, "--base-url", server.base_url], columns=100, limit=20
    )
    assert returncode == 0
    # What the terminal shows of each line: what follows its last return.
    shown = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    lines = [line.rstrip() for line in shown if "submitted as job" in line]
    assert lines == ["submitted as job %s" % api.jobs[0]["id"]]


def test_cli_quiet_still_warns_on_stderr_about_repeated_failures(server):
    server.serve(error_response(503), error_response(503), stream(DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "--quiet")
    assert result.returncode == 0 and result.stdout == RESULT_URL + "\n"
    # The first retry is routine (INFO); the second is a warning, shown even so.
    assert "retry 1 of" not in result.stderr and "retry 2 of" in result.stderr


def test_cli_demo_quiet_prints_only_the_url():
    result = run_cli("--demo", "--quiet", env={"MUNSIT_API_KEY": None})
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.endswith("_denoised.wav\n")


def test_demo_server_sends_heartbeat_comments():
    with mp.demo_server(duration=0.5) as base_url:
        response = requests.get(
            base_url + "/denoise/%s/progress" % JOB, headers={"x-api-key": "demo"}, timeout=10
        )
    assert b": keep-alive" in response.content and b'"stage": "done"' in response.content


def test_cli_demo_refuses_options_that_do_not_apply():
    result = run_cli("--demo", "--base-url", "http://127.0.0.1:1")
    assert result.returncode == 2 and "--demo" in result.stderr


def test_cli_demo_and_demo_fail():
    result = run_cli("--demo", env={"MUNSIT_API_KEY": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("http://127.0.0.1:") and result.stdout.endswith(
        "_denoised.wav\n"
    )
    assert "done" in result.stderr
    result = run_cli("--demo-fail", env={"MUNSIT_API_KEY": None})
    assert result.returncode == 1
    assert result.stdout == ""
    assert "failed" in result.stderr.splitlines()[-1]


def test_cli_output_downloads_the_result(server, tmp_path):
    done = sse_data({"stage": "done", "url": server.origin + "/files/x.wav", "denoiseId": JOB})
    server.serve(stream(processing(50), done), file_response(AUDIO))
    result = run_cli(JOB, "--base-url", server.base_url, "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.wav").read_bytes() == AUDIO
    assert server.requests[1].path == "/files/x.wav"


def test_cli_output_cut_short_exits_4_and_leaves_no_file(server, tmp_path):
    done = sse_data({"stage": "done", "url": server.origin + "/files/x.wav", "denoiseId": JOB})
    server.serve(stream(done), file_response(AUDIO[:200000], declared=len(AUDIO)))
    result = run_cli(
        JOB, "--base-url", server.base_url, "-o", str(tmp_path / "x.wav"), "--timeout", "3"
    )
    assert result.returncode == 4
    assert "resuming the download at byte 200000" in result.stderr
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupt_exits_130_without_a_traceback(server, signum):
    server.serve(stream(processing(5), hold_for=10.0, end="cut"))
    process = subprocess.Popen(
        [sys.executable, MODULE, JOB, "--base-url", server.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, MUNSIT_API_KEY=KEY),
    )
    try:
        deadline = time.monotonic() + 10
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert process.returncode == mp.EXIT_INTERRUPTED == 130
    assert b"Traceback" not in stderr
    assert stderr.decode().splitlines()[-1].endswith(" munsit-progress: error: interrupted")
    assert server.client_closed.wait(2.0)


def test_help_pages_say_which_page_they_are_and_what_timeout_means():
    main = run_cli("--help").stdout
    denoise = run_cli("denoise", "--help").stdout
    listing = run_cli("list", "--help").stdout
    assert "follow a job (this page)" in main
    assert "(this page)" not in denoise and "(this page)" not in listing
    assert "follow a job" in denoise
    timeout = re.search(r"--timeout SECONDS\s+(.*?)\n  -", listing, re.DOTALL).group(1)
    assert "job" not in timeout and "list" in timeout
    assert "--demo-fail" in denoise and "munsit-demo-" in " ".join(denoise.split())
    for page in (main, denoise, listing):
        table = page[page.index("exit status:") : page.index("\n\n", page.index("exit status:"))]
        assert re.search(r"\n  130 .*\n  141 ", table), table


def test_cli_help_and_version():
    result = run_cli("--help")
    assert result.returncode == 0
    for text in ("DENOISE_ID", "--demo", "exit status", "130", "MUNSIT_API_KEY"):
        assert text in result.stdout
    result = run_cli("--version")
    assert result.stdout.strip() == "munsit-progress " + mp.__version__


@pytest.mark.parametrize(
    "url",
    [
        "https://x/a\nb.wav",
        "https://x/\x1b[2Ja.wav",
        "javascript:alert(1)",
        "https://x/\\ud800.wav",
    ],
)
def test_cli_prints_only_a_clean_http_url_else_exits_5(server, url):
    body = '{"stage": "done", "url": "%s", "denoiseId": "%s"}' % (
        url.replace("\n", "\\n").replace("\x1b", "\\u001b"),
        JOB,
    )
    server.serve(stream(("data: %s\n\n" % body).encode()))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 5, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "\x1b" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_cli_error_event_with_control_characters_is_one_clean_line(server):
    server.serve(
        stream(sse_data({"stage": "error", "message": "bad\n2026-01-01 00:00:00 forged\x1b[31m"}))
    )
    result = run_cli(JOB, "--base-url", server.base_url, "-q")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "\x1b" not in result.stderr


def test_cli_reconnect_note_cannot_forge_lines(server):
    body = json.dumps({"errorMessage": "busy\n2026-01-01 00:00:00 munsit: forged"}).encode()
    server.serve(error_response(503, body), stream(DONE))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == 0
    assert not any(line.startswith("2026-01-01") for line in result.stderr.splitlines())


def test_cli_huge_timeout_is_accepted(server):
    server.serve(stream(processing(50), DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "--timeout", "1e10")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
    assert result.stdout == RESULT_URL + "\n"


@pytest.mark.skipif(os.name != "posix", reason="POSIX devices")
def test_cli_output_to_a_device_is_refused_before_following(server, tmp_path):
    server.serve(stream(DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "-o", device_node(tmp_path))
    assert result.returncode == 2 and "not a regular file" in result.stderr
    assert_nothing_sent(server)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd/1"), reason="needs /proc")
def test_cli_output_through_a_link_to_its_own_stdout_is_refused(server, tmp_path):
    os.symlink("/proc/self/fd/1", str(tmp_path / "link"))
    server.serve(stream(DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "-o", str(tmp_path / "link"))
    assert result.returncode == 2 and "not a regular file" in result.stderr
    assert_nothing_sent(server)


def test_cli_output_name_too_long_is_refused_before_following(server, tmp_path):
    server.serve(stream(DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "-o", str(tmp_path / ("x" * 300)))
    assert result.returncode == 2
    assert_nothing_sent(server)


@pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
def test_cli_json_into_a_reader_that_stops_exits_141_quietly(server):
    events = [processing(pct) for pct in range(0, 100, 5)]
    server.serve(stream(*(events + [DONE]), delay=0.05))
    process = subprocess.Popen(
        [sys.executable, MODULE, JOB, "--base-url", server.base_url, "--json", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, MUNSIT_API_KEY=KEY),
    )
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does after one line
    _, stderr = process.communicate(timeout=20)
    assert json.loads(first.decode())["stage"] == "processing"
    assert process.returncode == mp.EXIT_BROKEN_PIPE == 141
    assert stderr == b""


@pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
def test_cli_with_stderr_closed_still_finishes_the_job(server):
    server.serve(stream(processing(10, "x" * 100), processing(60), DONE, delay=0.05))
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads stderr
    try:
        result = subprocess.run(
            [sys.executable, MODULE, JOB, "--base-url", server.base_url],
            stdout=subprocess.PIPE,
            stderr=write_end,
            env=dict(os.environ, MUNSIT_API_KEY=KEY),
            timeout=20,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert result.stdout.decode() == RESULT_URL + "\n"


def test_cli_key_file_with_a_bom_is_read(server, tmp_path):
    server.serve(stream(DONE))
    (tmp_path / "key").write_bytes(b"\xef\xbb\xbf" + KEY.encode() + b"\n")
    result = run_cli(
        JOB,
        "--base-url",
        server.base_url,
        "--api-key-file",
        str(tmp_path / "key"),
        env={"MUNSIT_API_KEY": None},
    )
    assert result.returncode == 0, result.stderr
    assert server.requests[0].headers["x-api-key"] == KEY


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_cli_key_file_without_end_is_refused_quickly(server):
    started = time.monotonic()
    result = run_cli(
        JOB,
        "--base-url",
        server.base_url,
        "--api-key-file",
        "/dev/zero",
        env={"MUNSIT_API_KEY": None},
    )
    assert result.returncode == 2 and "longer than" in result.stderr
    assert time.monotonic() - started < 10
    assert_nothing_sent(server)


def test_cli_log_mode_stamps_every_line_and_says_retrying_before_any_connection(server):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    result = run_cli(JOB, "--base-url", "http://127.0.0.1:%d/api/v1" % port, "--timeout", "2.5")
    assert result.returncode == 4
    lines = result.stderr.splitlines()
    assert len(lines) >= 2 and all(STAMP.match(line) for line in lines), lines
    assert "trying again in" in result.stderr and "reconnecting" not in result.stderr


def test_cli_quiet_unknown_stage_flood_is_a_few_lines(server):
    flood = b"".join(sse_data({"stage": "x%d" % (n % 2)}) for n in range(20000))
    server.serve(stream(flood, DONE))
    result = run_cli(JOB, "--base-url", server.base_url, "-q")
    assert result.returncode == 0
    assert len(result.stderr.splitlines()) <= 3


def test_cli_help_says_json_progress_goes_to_stderr_and_the_jq_example_works():
    text = run_cli("--help").stdout
    assert "stderr unless -q" in " ".join(text.split())
    assert "jq -r '.pct // .url // .message'" in text


@pytest.mark.skipif(
    not os.path.exists(os.path.expanduser("~/.pyenv/versions/3.6.15/bin/python")),
    reason="needs a Python 3.6",
)
def test_python_3_6_gets_one_line_saying_3_7_is_needed():
    python36 = os.path.expanduser("~/.pyenv/versions/3.6.15/bin/python")
    result = subprocess.run(
        [python36, MODULE, "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "munsit_progress needs Python 3.7 or newer (this is 3.6)"


def test_cli_denoise_prints_the_url_or_the_saved_path(server, audio_file, tmp_path):
    api = FakeAPI("ok")
    server.serve(api)
    result = run_cli("denoise", audio_file, "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == server.origin + "/files/%s.wav\n" % api.jobs[0]["id"]
    assert "submitted as job %s" % api.jobs[0]["id"] in result.stderr
    target = str(tmp_path / "clean.wav")
    result = run_cli("denoise", audio_file, "-o", target, "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == target + "\n"
    assert (tmp_path / "clean.wav").read_bytes() == AUDIO


def test_cli_denoise_json_names_the_file_and_the_job(server, audio_file):
    api = FakeAPI("ok")
    server.serve(api)
    result = run_cli("denoise", audio_file, "--json", "-q", "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["stage"] for line in lines] == ["submitted", "processing", "done"]
    assert all(
        line["file"] == "interview.wav" and line["denoiseId"] == api.jobs[0]["id"] for line in lines
    )


def test_cli_denoise_json_has_saved_and_error_lines(server, audio_file, tmp_path):
    server.serve(FakeAPI("ok"))
    target = str(tmp_path / "c.wav")
    result = run_cli(
        "denoise", audio_file, "-o", target, "--json", "-q", "--base-url", server.base_url
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "stage": "saved",
        "path": target,
        "file": "interview.wav",
        "denoiseId": json.loads(result.stdout.splitlines()[0])["denoiseId"],
    }
    server.serve(FakeAPI("ok", progress=stream(FAILED)))
    result = run_cli("denoise", audio_file, "--json", "-q", "--base-url", server.base_url)
    last = json.loads(result.stdout.splitlines()[-1])
    assert result.returncode == 1 and last["stage"] == "error" and last["denoiseId"]


@pytest.mark.parametrize("answer, status", [("400", 3), ("402", 3), ("401", 3), ("hang", 6)])
def test_cli_denoise_exit_statuses(server, audio_file, answer, status):
    server.serve(FakeAPI(answer))
    extra = ["--timeout", "2"] if answer == "hang" else []
    result = run_cli("denoise", audio_file, "--base-url", server.base_url, *extra)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_cli_denoise_refuses_an_unlisted_type_unless_no_check(server, tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"hello")
    server.serve(FakeAPI("ok"))
    result = run_cli("denoise", str(tmp_path / "notes.txt"), "--base-url", server.base_url)
    assert result.returncode == 2 and "--no-check sends it anyway" in result.stderr
    assert "check=False" not in result.stderr  # a Python parameter, not the CLI's
    assert_nothing_sent(server)
    with pytest.raises(mp.ConfigurationError) as caught:
        submit_to(server, str(tmp_path / "notes.txt"))
    assert "check=False sends it anyway" in str(caught.value)
    assert "--no-check" not in str(caught.value)  # a CLI flag, not Python's
    result = run_cli(
        "denoise", str(tmp_path / "notes.txt"), "--no-check", "--base-url", server.base_url
    )
    assert result.returncode == 0, result.stderr


def test_messages_name_python_parameters_and_the_cli_shows_its_flags():
    failed = mp.DenoiseFailedError("the audio could not be processed")
    failed.denoise_id = JOB
    gone = mp._result_gone(mp.APIError(404, None, "gone"), JOB)
    for error, python, flag in (
        (failed, "retry_failed=True", "--retry-failed"),
        (gone, "reuse=False", "--no-reuse"),
    ):
        assert python in str(error) and "--" not in str(error)
        assert flag in mp._cli_text(str(error)) and python not in mp._cli_text(str(error))
    for python, flag in mp._CLI_WORDS:
        assert mp._cli_text("x %s y" % python) == "x %s y" % flag
        assert mp._cli_text(python) == mp._cli_text(mp._cli_text(python))


def test_a_cli_batch_names_its_flags_in_every_line_about_a_refused_file(server, tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"hello")
    paths = make_inputs(tmp_path / "in", 1) + [str(tmp_path / "notes.txt")]
    server.serve(FakeAPI("ok", echo=True))
    for extra in ((), ("--json",)):
        result = batch_cli(server, paths, tmp_path / "out", *extra)
        assert result.returncode == mp.EXIT_USAGE, result.stderr
        assert "--no-check sends it anyway" in result.stderr + result.stdout
        assert "check=False" not in result.stderr + result.stdout


def test_cli_denoise_failed_job_names_its_id(server, audio_file):
    api = FakeAPI("ok", progress=stream(FAILED))
    server.serve(api)
    result = run_cli("denoise", audio_file, "--base-url", server.base_url)
    assert result.returncode == 1
    assert api.jobs[0]["id"] in last_line(result)


def test_cli_list_prints_a_table_or_json_lines(server):
    api = FakeAPI()
    api.jobs.append(
        {
            "id": JOB,
            "status": "success",
            "file_name": "a\x1b[31m.wav",
            "audio_size": 2_000_000,
            "audio_duration": 75.0,
            "created_at": "2026-11-26T07:00:00.000Z",
            "visible_at": 0,
        }
    )
    server.serve(api)
    result = run_cli("list", "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CREATED", "STATUS", "DENOISE", "ID", "SIZE", "LENGTH", "FILE"]
    assert (
        JOB in lines[1]
        and "2026-11-26 07:00:00" in lines[1]
        and "1:15" in lines[1]
        and "2.0 MB" in lines[1]
    )
    assert "\x1b" not in result.stdout
    assert server.requests[0].path == "/api/v1/denoise?offset=0&limit=20"
    result = run_cli("list", "--json", "--limit", "0", "--base-url", server.base_url)
    assert json.loads(result.stdout)["id"] == JOB
    assert server.requests[-1].path == "/api/v1/denoise?offset=0"


def test_cli_old_form_and_commands_live_side_by_side(server):
    server.serve(stream(DONE))
    assert run_cli("--base-url", server.base_url, JOB).stdout == RESULT_URL + "\n"
    result = run_cli("denoise", "--help")
    assert result.returncode == 0 and "--no-check" in result.stdout
    assert "munsit-progress denoise FILE" in run_cli("--help").stdout


def test_cli_demo_denoise_runs_the_whole_chain(tmp_path, audio_file):
    target = str(tmp_path / "clean.wav")
    result = run_cli("--demo", "denoise", audio_file, "-o", target, env={"MUNSIT_API_KEY": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout == target + "\n"
    assert (tmp_path / "clean.wav").read_bytes() == open(audio_file, "rb").read()
    assert "saved " + target in result.stderr


def test_cli_json_applies_the_clean_url_rule_too(server):
    server.serve(
        stream(sse_data({"stage": "done", "url": "javascript:alert(1)", "denoiseId": JOB}))
    )
    result = run_cli(JOB, "--base-url", server.base_url, "--json")
    assert result.returncode == 5 and "javascript" not in result.stdout


@pytest.mark.skipif(os.name != "posix", reason="POSIX file descriptors")
@pytest.mark.parametrize("closed", ["stderr", "stdout"])
def test_cli_started_with_a_stream_closed(server, closed):
    server.serve(stream(processing(50), DONE))
    command = [sys.executable, MODULE, JOB, "--base-url", server.base_url]
    shell = " ".join("'%s'" % part for part in command) + (
        " 2>&-" if closed == "stderr" else " >&-"
    )
    result = subprocess.run(
        ["/bin/sh", "-c", shell],
        capture_output=True,
        env=dict(os.environ, MUNSIT_API_KEY=KEY),
        timeout=30,
    )
    if closed == "stderr":
        assert result.returncode == 0 and result.stdout.decode() == RESULT_URL + "\n"
    else:
        assert result.returncode == 141 and b"Traceback" not in result.stderr


def test_cli_usage_errors_are_timestamped_in_a_log_and_keep_stdout_clean():
    for args in (["--bogus"], []):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert all(STAMP.match(line) for line in result.stderr.splitlines())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_cli_key_file_fifo_is_waited_for_within_the_timeout(server, tmp_path):
    server.serve(stream(DONE))
    fifo = str(tmp_path / "key-fifo")
    os.mkfifo(fifo)
    started = time.monotonic()
    result = run_cli(
        JOB,
        "--base-url",
        server.base_url,
        "--api-key-file",
        fifo,
        "--timeout",
        "2",
        env={"MUNSIT_API_KEY": None},
    )
    assert result.returncode == 2 and "nothing came" in result.stderr
    assert time.monotonic() - started < 8
    writer = subprocess.Popen(["/bin/sh", "-c", "sleep 0.5; echo %s > '%s'" % (KEY, fifo)])
    try:
        result = run_cli(
            JOB, "--base-url", server.base_url, "--api-key-file", fifo, env={"MUNSIT_API_KEY": None}
        )
    finally:
        writer.wait(10)
    assert result.returncode == 0, result.stderr


def batch_cli(server, paths, output, *extra, **kwargs):
    return run_cli(
        "denoise",
        *paths,
        "-o",
        str(output) + os.sep,
        "--base-url",
        server.base_url,
        *extra,
        **kwargs,
    )


def test_inputs_inside_the_output_folder_are_refused(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", echo=True))
    with pytest.raises(ConfigurationError, match="output folder"):
        mp.denoise_many(paths, str(tmp_path / "in"), api_key=KEY, base_url=server.base_url)
    assert_nothing_sent(server)


def test_cli_batch_rehash_and_dry_run_agree_on_saved_inputs(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    aged(paths)
    server.serve(FakeAPI("ok", echo=True))
    assert batch_cli(server, paths, tmp_path / "out").returncode == 0
    for extra in ((), ("--rehash",)):
        result = batch_cli(server, paths, tmp_path / "out", "--dry-run", *extra)
        assert result.returncode == 0, result.stderr
        assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["skip", "skip"]
    result = batch_cli(server, paths, tmp_path / "out", "--rehash")
    assert result.returncode == 0 and "already saved" in result.stderr


def test_cli_journal_lists_each_step_and_where_the_inputs_stand(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", echo=True))
    many_on(server, paths, tmp_path / "out")
    result = run_cli("journal", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and sorted(line.split()[2] for line in lines).count("saved") == 2
    assert "2 input(s): saved 2" in result.stderr
    records = [
        json.loads(line)
        for line in run_cli("journal", "--json", str(tmp_path / "out")).stdout.splitlines()
    ]
    assert records == journal_of(tmp_path / "out")
    assert {r["file"] for r in records if r["event"] == "sending"} == {"in0.wav", "in1.wav"}


def test_cli_journal_in_a_folder_without_one_is_a_usage_error(tmp_path):
    result = run_cli("journal", str(tmp_path))
    assert result.returncode == 2 and "no batch journal" in result.stderr


def test_cli_journal_forget_before_keeps_what_still_has_its_output(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    many_on(server, paths, tmp_path / "out")
    os.unlink(str(tmp_path / "out" / "in0.wav"))  # its result was moved elsewhere
    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
    result = run_cli("journal", str(tmp_path / "out"), "--forget-before", tomorrow)
    assert result.returncode == 0 and "forgot 1 input(s)" in result.stderr, result.stderr
    assert {r.get("file") or r.get("output") for r in journal_of(tmp_path / "out")} >= {"in1.wav"}
    assert "in0.wav" not in {r.get("file") or r.get("output") for r in journal_of(tmp_path / "out")}
    again = many_on(server, paths[1:], tmp_path / "out")  # kept: still not paid again
    assert again[0].skipped and len(api.posts) == 2


def test_cli_journal_forget_before_waits_for_no_run(tmp_path):
    (tmp_path / "out").mkdir()
    holder = mp._Journal(str(tmp_path / "out"))
    try:
        result = run_cli("journal", str(tmp_path / "out"), "--forget-before", "2020-01-01")
    finally:
        holder.close()
    assert result.returncode == mp.EXIT_BUSY == 7


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the resource module")
def test_a_history_of_365000_inputs_does_not_slow_the_start(tmp_path):
    (tmp_path / "out").mkdir()
    journal = mp._Journal(str(tmp_path / "out"))
    journal._db.execute("PRAGMA cache_size=-262144")  # building it, not reading it
    try:
        for start in range(0, 365_000, 73_000):
            steps = []
            for index in range(start, start + 73_000):
                content = mp._Content(hashlib.sha256(b"%d" % index).hexdigest(), 8_000_000)
                job = str(uuid_module.UUID(int=index + 1))
                steps.append(("saved", content, {"denoiseId": job, "output": "r%d.wav" % index}))
            journal.record_all(steps, at=time.time() - 86400 * 30)
    finally:
        journal.close()
    paths = make_inputs(tmp_path / "in", 20)
    # The child's own peak, measured by a parent of its own: this process's
    # RUSAGE_CHILDREN holds the largest of every child the tests ran.
    measured = (
        "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(code)"
    )

    def dry_run(folder):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", measured, sys.executable, MODULE, "denoise", *paths]
            + ["-o", str(folder) + os.sep, "--dry-run"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "send 20" in result.stdout, result.stderr
        return time.monotonic() - started, int(result.stderr.split()[-1])

    empty_time, empty_rss = dry_run(tmp_path / "empty")
    full_time, full_rss = dry_run(tmp_path / "out")
    # 0.4 took 15 s and 700 MB for such a history; the figures are in the README.
    assert full_time < empty_time + 2.0
    assert full_rss < empty_rss + 50 * 1024  # kB


@pytest.mark.parametrize("tag", [True, False], ids=["by-tag", "by-old-name"])
def test_an_input_renamed_after_a_lost_answer_is_found_not_resent(server, tmp_path, tag):
    paths = make_inputs(tmp_path / "in", 1)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    job = submit_to(server, paths[0], tag=tag)  # taken; the answer never reached the journal
    identity = mp._Source(paths[0], True).identify(lambda: None)
    (tmp_path / "out").mkdir()
    write_sending(tmp_path / "out", identity, name="in0.wav")
    renamed = str(tmp_path / "in" / "renamed.wav")
    os.rename(paths[0], renamed)
    result = many_on(server, [renamed], tmp_path / "out", tag=tag)[0]
    assert result.denoise_id == job.denoise_id and len(api.posts) == 1


def test_a_429_asking_too_long_ends_the_uploads_behind_it(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)

    def throttled(conn, request, srv):
        # Read first, as servers do: urllib3 1.x cannot read an answer sent
        # before the body went out, and closing a socket with the body
        # unread can reset the connection before the answer is read.  The
        # client then sees a broken upload and (rightly) sends it again.
        if request.method == "GET":  # the look before paying: nothing yet
            conn.sendall(head(200, {"Content-Length": "2", "Connection": "close"}) + b"[]")
            return
        read_body(conn, request)
        error_response(429, headers={"Retry-After": "99999999999999"})(conn, request, srv)

    server.serve(throttled)
    started = time.monotonic()
    results = many_on(server, paths, tmp_path / "out", concurrency=1)
    assert time.monotonic() - started < 10
    assert mp._batch_status(results) == mp.EXIT_GAVE_UP
    assert len([r for r in server.requests if r.method == "POST"]) == 1


def test_files_not_sent_leave_no_sending_line(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    api = FakeAPI("ok", "402", echo=True)
    server.serve(api)
    # Untagged: a rerun looks up only uploads that may have been taken.
    many_on(server, paths, tmp_path / "out", concurrency=1, tag=False)
    sending = [line for line in journal_of(tmp_path / "out") if line.get("event") == "sending"]
    unsent = [line for line in journal_of(tmp_path / "out") if line.get("event") == "unsent"]
    assert len(sending) == 2 and len(unsent) == 1  # the 402 was certainly not taken
    requests_before = len(server.requests)
    many_on(server, paths, tmp_path / "out", concurrency=1, tag=False)
    lookups = [
        r for r in server.requests[requests_before:] if r.path.startswith("/api/v1/denoise?")
    ]
    assert lookups == []


def test_nothing_is_hashed_or_sent_past_the_deadline(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    stall = stream(processing(10), hold_for=20, end="cut")
    api = FakeAPI("ok", echo=True, progress=stall)
    server.serve(api)
    started = time.monotonic()
    results = many_on(server, paths, tmp_path / "out", concurrency=1, timeout=1.5)
    assert time.monotonic() - started < 4
    assert len(api.posts) == 1
    assert sum(isinstance(r.error, mp.NotSubmittedError) for r in results) == 3


def test_inputs_with_the_same_content_are_both_already_saved_on_a_rerun(server, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF" + b"x" * 3000)
    (folder / "b.wav").write_bytes(b"RIFF" + b"x" * 3000)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    paths = [str(folder / "a.wav"), str(folder / "b.wav")]
    many_on(server, paths, tmp_path / "out", check=False)
    again = many_on(server, paths, tmp_path / "out", check=False)
    assert all(r.skipped for r in again) and len(api.posts) == 1


def test_dry_run_counts_shared_content_once(server, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF" + b"x" * 3000)
    (folder / "b.wav").write_bytes(b"RIFF" + b"x" * 3000)
    server.serve(FakeAPI("ok"))
    result = batch_cli(
        server,
        [str(folder / "a.wav"), str(folder / "b.wav")],
        tmp_path / "out",
        "--dry-run",
        "--no-check",
    )
    assert result.stdout.splitlines()[-1].startswith("would send 1 file(s)")


def test_cli_batch_mixed_outcomes_give_one_status_and_a_summary_in_input_order(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    stall = stream(processing(10), hold_for=20, end="cut")
    api = FakeAPI("ok", echo=True, by_name={"in1.wav": stream(FAILED), "in2.wav": stall})
    server.serve(api)
    result = batch_cli(server, paths, tmp_path / "out", "--timeout", "4", "--jobs", "4")
    assert result.returncode == mp.EXIT_GAVE_UP == 4, result.stderr  # 4 wins over 1
    lines = result.stderr.splitlines()
    summary = [STAMP.sub("", line, count=1) for line in lines[-6:-1]]
    assert summary[0].split()[:2] == ["FILE", "OUTCOME"]
    assert "in1.wav" in lines[-1] and "--retry-failed" in lines[-1]
    assert [line.split()[0] for line in summary[1:]] == ["in0.wav", "in1.wav", "in2.wav", "in3.wav"]
    assert [line.split()[1] for line in summary[1:]] == ["saved", "failed", "gave", "saved"]
    ids = {untagged(job["file_name"]): job["id"] for job in api.jobs}
    assert all(ids[line.split()[0]] in line for line in summary[1:])
    assert result.stdout.splitlines() == [
        str(tmp_path / "out" / "in0.wav"),
        str(tmp_path / "out" / "in3.wav"),
    ]


def test_cli_batch_second_run_is_refused_at_once_with_status_7(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    holder = mp._Journal(str(tmp_path / "out"))  # the first run, still going
    try:
        server.serve(FakeAPI("ok"))
        started = time.monotonic()
        result = batch_cli(server, paths, tmp_path / "out")
        assert result.returncode == mp.EXIT_BUSY == 7
        assert "another run" in result.stderr and time.monotonic() - started < 10
    finally:
        holder.close()
    assert_nothing_sent(server)


def test_cli_batch_colliding_names_are_refused_before_any_upload(server, tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.wav").write_bytes(b"RIFF....")
    server.serve(FakeAPI("ok"))
    result = batch_cli(
        server, [str(tmp_path / "x/a.wav"), str(tmp_path / "y/a.wav")], tmp_path / "out"
    )
    assert result.returncode == 2 and "same name" in result.stderr
    assert_nothing_sent(server)


PLAN_A = mp._Content("a" * 64, 100)
PLAN_B = mp._Content("b" * 64, 200)
PLAN_JOB = "11111111-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    "steps, retry_failed, expected",
    [
        ([], False, [("send", None), ("follow", None)]),  # a.wav, then c.wav: same content
        ([("submitted", {"denoiseId": PLAN_JOB})], False, [("follow", PLAN_JOB)] * 2),
        ([("sending", {"file": "a.wav"})], False, [("look up", None), ("follow", None)]),
        ([("failed", {"denoiseId": PLAN_JOB, "error": "x"})], False, [("failed", PLAN_JOB)] * 2),
        (
            [("failed", {"denoiseId": PLAN_JOB, "error": "x"})],
            True,
            [("send", None), ("follow", None)],
        ),
        (
            [("saved", {"denoiseId": PLAN_JOB, "output": "a.wav"})],
            False,
            [("skip", PLAN_JOB), ("follow", PLAN_JOB)],
        ),
        (
            [("saved", {"denoiseId": PLAN_JOB, "output": "a.wav", "other": True})],
            False,
            [("refuse", None), ("send", None)],
        ),
    ],
)
def test_the_planner_decides_each_input_from_the_journal(tmp_path, steps, retry_failed, expected):
    """One table for the decision a batch and its dry run share: a.wav,
    then c.wav of the same content."""
    (tmp_path / "a.wav").write_bytes(b"result")
    journal = mp._Journal(str(tmp_path))
    try:
        for event, fields in steps:
            content = PLAN_B if fields.pop("other", False) else PLAN_A
            journal.record(event, content, **fields)
        planner = mp._Planner(journal, mp._JobOptions(retry_failed=retry_failed))
        decisions = [
            planner.decide(str(tmp_path / name), stem, PLAN_A)
            for name, stem in (("in/a.wav", "a"), ("in/c.wav", "c"))
        ]
    finally:
        journal.close()
    assert [(d.action, d.job) for d in decisions] == expected
    ends = {"skip": type(None), "refuse": ConfigurationError, "failed": DenoiseFailedError}
    for decision in decisions:
        assert isinstance(decision.error, ends.get(decision.action, type(None)))


def test_the_caps_hold_back_what_the_planner_would_send_over_them():
    caps = mp._Caps(max_files=2, max_bytes=250)
    send = mp._Decision("send")
    admitted = [mp._Planner.admit(send, size, caps).action for size in (100, 200, 100, 10)]
    assert admitted == ["send", "later", "send", "later"]  # 200 over the bytes; then the files
    assert mp._Planner.admit(mp._Decision("follow"), 10**9, caps).action == "follow"
    assert isinstance(mp._Planner.admit(send, 1, caps).error, mp.NotSubmittedError)


def test_cli_batch_dry_run_sends_nothing_and_max_files_caps(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    result = batch_cli(server, paths, tmp_path / "out", "--max-files", "1", "--jobs", "1")
    assert result.returncode == 4 and len(api.posts) == 1
    assert "--max-files" in result.stderr and "max_files" not in result.stderr
    requests_before = len(server.requests)
    result = batch_cli(server, paths, tmp_path / "out", "--dry-run", "--max-files", "2")
    assert result.returncode == 0, result.stderr
    assert len(server.requests) == requests_before  # nothing sent, not even a GET
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["skip", "send", "send", "later"]
    assert lines[-1].startswith("would send 2 file(s)")


def test_cli_batch_dry_run_works_while_another_run_holds_the_folder(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    (tmp_path / "out").mkdir()
    holder = mp._Journal(str(tmp_path / "out"))
    try:
        server.serve(FakeAPI("ok"))
        result = batch_cli(server, paths, tmp_path / "out", "--dry-run")
    finally:
        holder.close()
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:3]] == ["send", "send"]
    assert_nothing_sent(server)


def test_cli_batch_json_lines_name_the_file_and_the_job(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    server.serve(FakeAPI("ok", echo=True))
    result = batch_cli(server, paths, tmp_path / "out", "--json", "-q")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["stage"] for r in records} == {"submitted", "processing", "done", "result"}
    assert all(r["file"] in ("in0.wav", "in1.wav") and r["denoiseId"] for r in records)
    results = [r for r in records if r["stage"] == "result"]
    assert [r["file"] for r in results] == ["in0.wav", "in1.wav"]
    assert all(r["outcome"] == "saved" and r["status"] == 0 for r in results)


def journal_is_whole(folder):
    view = mp._JournalView.reading(str(folder))
    try:
        return view._db.execute("PRAGMA integrity_check").fetchall() == [("ok",)] and all(
            record["event"] for record in view.records()
        )
    finally:
        view.close()


def interrupt_a_batch(server, tmp_path, signum):
    """A batch of 4 inputs, 2 at a time, stopped by ``signum`` while its
    first two jobs are followed: (the API, the inputs, the process's exit
    status, its stderr)."""
    paths = make_inputs(tmp_path / "in", 4)

    def slow(conn, request, srv):
        job = request.path.split("/")[-2]
        done = sse_data(
            {"stage": "done", "url": srv.origin + "/files/%s.wav" % job, "denoiseId": job}
        )
        stream(processing(10), done, delay=1.5)(conn, request, srv)

    api = FakeAPI("ok", echo=True, progress=slow)
    server.serve(api)
    command = [
        sys.executable,
        MODULE,
        "denoise",
        *paths,
        "-o",
        str(tmp_path / "out"),
        "--base-url",
        server.base_url,
        "--jobs",
        "2",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, MUNSIT_API_KEY=KEY, PYTHONIOENCODING="utf-8"),
    )
    try:
        deadline = time.monotonic() + 15
        while len(api.jobs) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return api, paths, process.returncode, stderr.decode("utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_batch_interrupted_exits_130_leaving_a_consistent_journal(server, tmp_path, signum):
    api, paths, returncode, stderr = interrupt_a_batch(server, tmp_path, signum)
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    out = tmp_path / "out"
    assert journal_is_whole(out)
    assert not [name for name in os.listdir(str(out)) if name.endswith(".part")]
    api.progress = None
    result = batch_cli(server, paths, out)
    assert result.returncode == 0, result.stderr
    assert api.posts_by_name() == {os.path.basename(p): 1 for p in paths}
    for path in paths:
        assert (out / os.path.basename(path)).read_bytes() == open(path, "rb").read()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_batch_shows_what_is_pending_and_that_a_rerun_finishes_it(
    server, tmp_path, signum
):
    api, paths, returncode, stderr = interrupt_a_batch(server, tmp_path, signum)
    assert returncode == 130, stderr
    lines = [STAMP.sub("", line, count=1) for line in stderr.splitlines()]
    table = lines[lines.index(next(line for line in lines if line.startswith("FILE "))) :]
    rows = {line.split()[0]: line.split() for line in table[1:5]}
    assert sorted(rows) == ["in0.wav", "in1.wav", "in2.wav", "in3.wav"]
    for job in api.jobs:  # the jobs being followed, named, as pending
        row = rows[untagged(job["file_name"])]
        assert row[1] == "pending" and row[2] == job["id"]
    assert [rows[name][1:4] for name in ("in2.wav", "in3.wav")] == [["not", "sent", "yet"]] * 2
    assert "run the same command again" in stderr.splitlines()[-1]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_cli_batch_terminal_display_under_a_pty(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    server.serve(FakeAPI("ok", echo=True, progress=None))
    returncode, stdout, text = run_with_stderr_on_a_pty(
        ["denoise", *paths, "-o", str(tmp_path / "out"), "--base-url", server.base_url],
        columns=120,
        limit=30,
    )
    assert returncode == 0
    assert "\x1b[J" in text and "3 done, 0 failed, 0 left" in text
    assert len(stdout.splitlines()) == 3


def test_cli_demo_batch_runs_a_whole_batch(tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    result = run_cli(
        "--demo",
        "denoise",
        *paths,
        "-o",
        str(tmp_path / "out"),
        "--jobs",
        "2",
        env={"MUNSIT_API_KEY": None},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for path in paths:
        assert (tmp_path / "out" / os.path.basename(path)).read_bytes() == open(path, "rb").read()


def test_a_demo_batch_rerun_after_its_timeout_saves_each_input_s_own_audio(tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = ["--demo", "denoise", *paths, "-o", str(out)]
    cut = run_cli(*args, "--timeout", "2", env={"MUNSIT_DEMO_SECONDS": "600"}, tmpdir=tmp_path)
    assert cut.returncode == mp.EXIT_GAVE_UP, cut.stderr
    assert "its jobs are kept in %s" % (tmp_path / "munsit-demo-") in cut.stderr
    listed = run_cli(
        "--demo", "list", "--json", env={"MUNSIT_DEMO_SECONDS": "600"}, tmpdir=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    jobs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(jobs) == 2 and {job["status"] for job in jobs} == {"pending"}
    # The jobs end as the rerun's simulator (0.6 s jobs) follows them.
    again = run_cli(*args, env={"MUNSIT_DEMO_SECONDS": "0.6"}, tmpdir=tmp_path)
    assert again.returncode == 0, again.stderr
    for path in paths:
        assert (out / os.path.basename(path)).read_bytes() == open(path, "rb").read()
    listed = run_cli("--demo", "list", "--json", tmpdir=tmp_path)
    assert sorted(json.loads(line)["id"] for line in listed.stdout.splitlines()) == sorted(
        job["id"] for job in jobs
    )


def test_demo_list_shows_the_jobs_of_earlier_runs(tmp_path, audio_file):
    first = run_cli("--demo", "denoise", audio_file, env={"MUNSIT_API_KEY": None}, tmpdir=tmp_path)
    assert first.returncode == 0, first.stderr
    listed = run_cli("--demo", "list", tmpdir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "interview.wav" in listed.stdout and "success" in listed.stdout
    again = run_cli("--demo", "denoise", audio_file, tmpdir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "found its job" in again.stderr
    assert len(run_cli("--demo", "list", tmpdir=tmp_path).stdout.splitlines()) == 2  # head, 1 job
    elsewhere = run_cli("--demo", "list")
    assert elsewhere.returncode == 0 and elsewhere.stdout == ""


def test_demo_fail_works_with_denoise_and_its_jobs_stay_failed(tmp_path, audio_file):
    failed = run_cli("--demo-fail", "denoise", audio_file, "-o", str(tmp_path / "x.wav"))
    assert failed.returncode == mp.EXIT_JOB_FAILED, failed.stderr
    assert "new jobs fail" in failed.stderr and not (tmp_path / "x.wav").exists()
    paths = make_inputs(tmp_path / "in", 2)
    batch = run_cli("--demo-fail", "denoise", *paths, "-o", str(tmp_path / "out"), tmpdir=tmp_path)
    assert batch.returncode == mp.EXIT_JOB_FAILED, batch.stderr
    listed = run_cli("--demo", "list", "--json", tmpdir=tmp_path)
    assert [json.loads(line)["status"] for line in listed.stdout.splitlines()] == ["failed"] * 2
    retried = run_cli(
        "--demo", "denoise", *paths, "-o", str(tmp_path / "out"), "--retry-failed", tmpdir=tmp_path
    )
    assert retried.returncode == 0, retried.stderr
    usage = run_cli("--demo", "--demo-fail", "denoise", audio_file)
    assert usage.returncode == mp.EXIT_USAGE


def test_the_cli_run_again_finds_its_job_and_pays_once(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(mp._demo_wav())
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    args = ["denoise", str(tmp_path / "a.wav"), "--base-url", server.base_url]
    first = run_cli(*args, "-o", str(tmp_path / "1.wav"))
    again = run_cli(*args, "-o", str(tmp_path / "2.wav"), "--json")
    assert first.returncode == again.returncode == 0, again.stderr
    assert len(api.posts) == 1
    assert "submitted as job %s" % api.jobs[0]["id"] in first.stderr
    assert "found its job %s" % api.jobs[0]["id"] in again.stderr
    lines = [json.loads(line) for line in again.stdout.splitlines()]
    assert {
        "stage": "submitted",
        "file": "a.wav",
        "denoiseId": api.jobs[0]["id"],
        "adopted": True,
    } in lines
    assert (tmp_path / "2.wav").read_bytes() == mp._demo_wav()
    fresh = run_cli(*args, "--no-reuse")
    plain = run_cli(*args, "--no-tag")
    assert fresh.returncode == plain.returncode == 0, plain.stderr
    assert len(api.posts) == 3 and api.posts[2][1][0].get_filename() == "a.wav"


def test_the_cli_says_how_to_send_a_failed_job_s_file_again(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(mp._demo_wav())
    api = FakeAPI("ok", echo=True, by_name={"a.wav": stream(FAILED)})
    server.serve(api)
    args = ["denoise", str(tmp_path / "a.wav"), "--base-url", server.base_url]
    failed = run_cli(*args)
    again = run_cli(*args)
    assert failed.returncode == again.returncode == mp.EXIT_JOB_FAILED
    assert "--retry-failed" in again.stderr and len(api.posts) == 1
    assert "retry_failed" not in failed.stderr + again.stderr
    api.by_name = {}
    retried = run_cli(*args, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert len(api.posts) == 2


def test_following_a_failed_job_by_its_id_says_how_to_send_the_file_again(server):
    server.serve(stream(processing(5), FAILED))
    result = run_cli(JOB, "--base-url", server.base_url)
    assert result.returncode == mp.EXIT_JOB_FAILED
    assert "--retry-failed" in last_line(result) and "follow it" not in result.stderr
    error = DenoiseFailedError("audio file is corrupt")
    error.denoise_id = JOB
    assert "retry_failed=True" in str(error) and "follow it" not in str(error)


def test_a_batch_that_exits_1_for_failed_jobs_ends_saying_retry_failed(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 2)
    api = FakeAPI("ok", echo=True, by_name={"in0.wav": stream(FAILED)})
    server.serve(api)
    for _ in range(2):  # the run where it fails, and a rerun that only reports it
        result = batch_cli(server, paths, tmp_path / "out")
        assert result.returncode == mp.EXIT_JOB_FAILED, result.stderr
        assert "--retry-failed" in last_line(result) and "in0.wav" in last_line(result)
    assert len(api.posts) == 2
    quiet = batch_cli(server, paths, tmp_path / "out", "--quiet")
    assert quiet.returncode == mp.EXIT_JOB_FAILED and quiet.stderr == ""


def test_a_single_file_saved_into_a_batch_s_folder_waits_for_no_batch(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(mp._demo_wav())
    (tmp_path / "out").mkdir()
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    args = ["denoise", str(tmp_path / "a.wav"), "--base-url", server.base_url]
    holder = mp._Journal(str(tmp_path / "out"))  # a batch, running there
    try:
        busy = run_cli(*args, "-o", str(tmp_path / "out" / "a.wav"))
        followed = run_cli(
            JOB, "--base-url", server.base_url, "-o", str(tmp_path / "out" / "a.wav")
        )
    finally:
        holder.close()
    assert busy.returncode == followed.returncode == mp.EXIT_BUSY, busy.stderr
    assert "batch" in last_line(busy) and "batch" in last_line(followed)
    assert_nothing_sent(server)
    done = run_cli(*args, "-o", str(tmp_path / "out" / "a.wav"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.wav").read_bytes() == mp._demo_wav()
    elsewhere = run_cli(*args, "-o", str(tmp_path / "b.wav"))  # no batch's folder: no lock file
    assert elsewhere.returncode == 0 and not (tmp_path / mp._LOCK_NAME).exists()


def test_a_dry_run_exits_with_the_status_the_run_would(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 3)
    api = FakeAPI("ok", echo=True, by_name={"in1.wav": stream(FAILED)})
    server.serve(api)
    out = tmp_path / "out"
    assert batch_cli(server, paths, out).returncode == mp.EXIT_JOB_FAILED
    dry = batch_cli(server, paths, out, "--dry-run")
    assert dry.returncode == mp.EXIT_JOB_FAILED, dry.stdout  # as the rerun would
    with open(paths[0], "ab") as changed:  # other content under a saved name
        changed.write(b"more")
    dry = batch_cli(server, paths, out, "--dry-run")
    run = batch_cli(server, paths, out)
    assert dry.returncode == run.returncode == mp.EXIT_USAGE, (dry.stdout, run.stderr)
    assert dry.stdout.splitlines()[1].split()[0] == "refuse"
    assert len(api.posts) == 3


def test_following_a_job_by_its_id_and_saving_it_uses_one_session(server, tmp_path, monkeypatch):
    server.serve(
        stream(
            processing(50),
            sse_data({"stage": "done", "url": server.origin + "/r.wav", "denoiseId": JOB}),
        ),
        file_response(AUDIO),
    )
    sessions = []
    new_session = mp._new_session
    monkeypatch.setattr(
        mp, "_new_session", lambda *a, **k: sessions.append(1) or new_session(*a, **k)
    )
    monkeypatch.setenv("MUNSIT_API_KEY", KEY)
    out = tmp_path / "r.wav"
    status = mp.main([JOB, "--base-url", server.base_url, "-o", str(out), "-q", "--timeout", "30"])
    assert status == 0 and out.read_bytes() == AUDIO
    assert len(sessions) == 1


def test_a_horizon_that_is_not_a_positive_number_of_days_is_a_usage_error(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(mp._demo_wav())
    server.serve(FakeAPI("ok"))
    result = run_cli(
        "denoise", str(tmp_path / "a.wav"), "--base-url", server.base_url, "--horizon", "-1"
    )
    assert result.returncode == mp.EXIT_USAGE and "--horizon" in result.stderr
    assert_nothing_sent(server)


# --------------------------------------------------------------------------
# Notebook display (a real Jupyter kernel)
# --------------------------------------------------------------------------


def test_notebook_display_is_one_output_updated_in_place(server):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    events = [processing(pct, "خطوة %d" % pct) for pct in range(0, 100, 4)]
    server.serve(stream(*(events + [DONE]), delay=0.01))
    source = "\n".join(
        [
            "import sys",
            "sys.path.insert(0, %r)" % os.path.dirname(MODULE),
            "import munsit_progress",
            "done = munsit_progress.wait(%r, api_key=%r, base_url=%r,"
            " on_progress=munsit_progress.ProgressBar())" % (JOB, KEY, server.base_url),
            "print(done.url)",
        ]
    )
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    displays = [out for out in outputs if out.output_type == "display_data"]
    streams = [out for out in outputs if out.output_type == "stream"]
    assert len(displays) == 1, outputs
    html = displays[0].data["text/html"]
    assert "<progress" in html and RESULT_URL in html and "done" in html
    assert [out.text for out in streams] == [RESULT_URL + "\n"]


# --------------------------------------------------------------------------
# Killed and run again (slow: run once in CI, and by the README's command)
# --------------------------------------------------------------------------

KILL_POINTS = [
    (event, nth)
    for nth in (1, 2, 3)
    for event in ("post-head", "post-taken", "post-answered", "progress", "download-half")
]


def kill_at(command, api, point):
    """Run ``command``, SIGKILL it when the server reaches ``point``, and
    release the server; whether the run got that far."""
    api.hit.clear()
    api.release.clear()
    api.pause_at = point
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, MUNSIT_API_KEY=KEY),
    )
    try:
        reached = api.hit.wait(20)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        api.pause_at = None
        api.release.set()
    return reached


def batch_command(server, paths, out, jobs):
    return [
        sys.executable,
        MODULE,
        "denoise",
        *paths,
        "-o",
        str(out),
        "--base-url",
        server.base_url,
        "--jobs",
        str(jobs),
    ]


def assert_paid_once_and_whole(api, paths, out):
    assert api.posts_by_name() == {os.path.basename(p): 1 for p in paths}
    for path in paths:
        assert (out / os.path.basename(path)).read_bytes() == open(path, "rb").read()
    assert sorted(os.listdir(str(out))) == sorted(
        [mp.JOURNAL_NAME, mp._LOCK_NAME] + [os.path.basename(p) for p in paths]
    )
    assert journal_is_whole(out)


SINGLE_KILL_POINTS = [
    ("post-head", 1),
    ("post-taken", 1),
    ("post-answered", 1),
    ("progress", 1),
    ("download-half", 1),
]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "point", SINGLE_KILL_POINTS, ids=["%s-%d" % point for point in SINGLE_KILL_POINTS]
)
def test_the_one_file_command_killed_at_any_point_and_run_again_pays_once(server, tmp_path, point):
    path = tmp_path / "a.wav"
    path.write_bytes(os.urandom(300_000))
    out = tmp_path / "out"
    out.mkdir()
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    args = ["denoise", str(path), "-o", str(out / "clean.wav"), "--base-url", server.base_url]
    assert kill_at([sys.executable, MODULE, *args, "--no-check"], api, point)
    result = run_cli(*args, "--no-check")
    assert result.returncode == 0, result.stderr
    assert api.posts_by_name() == {"a.wav": 1}
    assert (out / "clean.wav").read_bytes() == path.read_bytes()
    assert os.listdir(str(out)) == ["clean.wav"]  # the killed run's .part is gone


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("point", KILL_POINTS, ids=["%s-%d" % point for point in KILL_POINTS])
def test_a_batch_killed_at_any_point_and_run_again_pays_once_and_saves_whole_files(
    server, tmp_path, point
):
    paths = make_inputs(tmp_path / "in", 3)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    out = tmp_path / "out"
    assert kill_at(batch_command(server, paths, out, 1), api, point), "never reached %s" % (point,)
    result = batch_cli(server, paths, out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert_paid_once_and_whole(api, paths, out)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_batch_killed_again_and_again_still_pays_once(server, tmp_path):
    paths = make_inputs(tmp_path / "in", 4)
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    out = tmp_path / "out"
    for point in [("post-taken", 1), ("post-answered", 3), ("download-half", 3), ("post-taken", 5)]:
        if not kill_at(batch_command(server, paths, out, 2), api, point):
            break  # the batch finished before this point: nothing left to kill
    result = batch_cli(server, paths, out)
    assert result.returncode == 0, result.stderr
    assert_paid_once_and_whole(api, paths, out)


# --------------------------------------------------------------------------
# Task engines: Dask and Celery, workers killed (slow; .ci/run's engines step)
# --------------------------------------------------------------------------
# An engine runs a task again when the worker running it dies, and Dask also
# recomputes finished results that lived on a dead worker: every rerun is a
# denoise() of a file that may already have a paid job.  These tests run
# denoise() over 30 inputs on real engines, SIGKILL workers mid-run, and
# count the jobs paid for each input's bytes on the fake API.

ENGINE_INPUTS = 30
ENGINE_JOB_SECONDS = 1.2  # long enough for a kill to land while jobs run
ENGINE_LIMIT = 150.0  # seconds for a whole run: a hang fails, it never waits


class EngineServer(Server):
    """The loopback server, accepting for longer: a run of 30 jobs with
    workers restarted takes a minute, and a stale lock can hold one task."""

    LIFETIME = 300.0


@pytest.fixture
def engine_server():
    srv = EngineServer()
    yield srv
    srv.close()


class TimedAPI(FakeAPI):
    """The fake API whose jobs run for ``seconds`` after their upload,
    followed or not, as the real service's do: a progress stream reports
    the time left and then says done (at once for a finished job), and the
    list shows a finished job as success.  Results echo the upload.
    ``following`` counts the progress streams open now."""

    def __init__(self, server, seconds=ENGINE_JOB_SECONDS):
        super().__init__("ok", echo=True)
        self.origin = server.origin
        self.seconds = seconds
        self.following = 0
        self.progress = self.follow

    def started(self, job):
        with self.lock:
            for record in self.jobs:
                if record["id"] == job:
                    return record["visible_at"]
        return time.monotonic()

    def follow(self, conn, request, server):
        job = request.path.split("?")[0].split("/")[-2]
        left = self.started(job) + self.seconds - time.monotonic()
        steps = max(0, int(left / 0.3) + 1) if left > 0 else 0
        parts = [
            processing(min(99, int(100 * (self.seconds - left) / self.seconds)), "cleaning")
            for _ in range(steps)
        ]
        parts.append(
            sse_data(
                {"stage": "done", "url": self.origin + "/files/%s.wav" % job, "denoiseId": job}
            )
        )
        with self.lock:
            self.following += 1
        try:
            stream(*parts, delay=max(0.0, left) / max(1, steps))(conn, request, server)
        finally:
            with self.lock:
                self.following -= 1

    def list(self, conn, request):
        now = time.monotonic()
        with self.lock:
            for record in self.jobs:
                if record["status"] == "pending" and now >= record["visible_at"] + self.seconds:
                    record["status"] = "success"
                    record["audio_url"] = self.origin + "/files/%s.wav" % record["id"]
        super().list(conn, request)


def paid_per_input(api, paths):
    """How many uploads reached the API whole, per input, told apart by
    their bytes (a name may be changed by a tag; the bytes are not)."""
    names = {}
    for path in paths:
        with open(path, "rb") as handle:
            names[handle.read()] = os.path.basename(path)
    counts = dict.fromkeys(names.values(), 0)
    for post in list(api.posts):
        if post[1] is not None:
            name = names.get(post[1][0].get_payload(decode=True), "<unknown bytes>")
            counts[name] = counts.get(name, 0) + 1
    return counts


def assert_each_input_paid_once_and_saved_whole(api, paths, out):
    counts = paid_per_input(api, paths)
    not_once = {name: count for name, count in counts.items() if count != 1}
    assert not_once == {}, "jobs paid per input, where not one: %s (%d uploads for %d inputs)" % (
        not_once,
        sum(counts.values()),
        len(paths),
    )
    assert len(api.jobs) == len(paths)
    for path in paths:
        with open(path, "rb") as handle:
            assert (out / os.path.basename(path)).read_bytes() == handle.read(), path


def followed_again(api):
    """How many progress streams were opened beyond one per job: tasks that
    an engine ran again and that got past their upload."""
    return sum(1 for event, _ in list(api.events) if event == "progress") - len(api.jobs)


def wait_until(condition, limit, step=0.02):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


def downloads(server):
    return sum(1 for request in list(server.requests) if request.path.startswith("/files/"))


def run_on_dask(server, tmp_path, kill_after, lock=None):
    """30 denoise() tasks on a LocalCluster of three worker processes; after
    each count in ``kill_after`` of results downloaded, once all three
    workers are following a paid job, one worker is SIGKILLed and its nanny
    starts it again.  Returns the API, the inputs and the output folder."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    paths = make_inputs(tmp_path / "in", ENGINE_INPUTS)
    out = tmp_path / "out"
    out.mkdir()
    api = TimedAPI(server)
    server.serve(api)
    extra = {} if lock is None else {"lock": lock}
    config = {
        # A task on a killed worker counts as suspect; three kills must not
        # turn one into an error.
        "distributed.scheduler.allowed-failures": 20,
        # A lock held by a killed worker is released when its lease ends.
        "distributed.scheduler.locks.lease-timeout": "6s",
        "distributed.scheduler.locks.lease-validation-interval": "1s",
    }
    with dask.config.set(config), distributed.LocalCluster(
        n_workers=3,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, distributed.Client(cluster) as client:
        futures = [
            client.submit(
                mp.denoise,
                path,
                str(out / os.path.basename(path)),
                api_key=KEY,
                base_url=server.base_url,
                timeout=90,
                key="denoise-%s" % os.path.basename(path),
                pure=False,
                **extra,
            )
            for path in paths
        ]
        for number, after in enumerate(kill_after):
            assert wait_until(
                lambda after=after: downloads(server) >= after and api.following == 3, 60
            ), "kill %d: never saw %d results and three jobs followed" % (number + 1, after)
            victim = sorted(client.run(os.getpid).values())[number % 3]
            os.kill(victim, signal.SIGKILL)

            def restarted(victim=victim):
                pids = client.run(os.getpid, on_error="ignore").values()
                return len(pids) == 3 and victim not in pids

            assert wait_until(restarted, 60, step=0.1), "the killed worker was not replaced"
        distributed.wait(futures, timeout=ENGINE_LIMIT)
        results = client.gather(futures)
    assert all(isinstance(done, mp.DoneEvent) for done in results)
    return api, paths, out


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_dask_with_a_worker_killed_pays_once_per_input(engine_server, tmp_path):
    api, paths, out = run_on_dask(engine_server, tmp_path, kill_after=[6])
    assert_each_input_paid_once_and_saved_whole(api, paths, out)
    assert followed_again(api) >= 1  # the kill did make Dask run tasks again


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_dask_with_three_workers_killed_in_turn_under_a_dask_lock_pays_once_per_input(
    engine_server, tmp_path
):
    distributed = pytest.importorskip("distributed")
    api, paths, out = run_on_dask(
        engine_server, tmp_path, kill_after=[3, 10, 17], lock=distributed.Lock
    )
    assert_each_input_paid_once_and_saved_whole(api, paths, out)
    assert followed_again(api) >= 3


# The Celery app, written beside the test's files so that the worker can
# import it: redis is its broker and its result store; a task is
# acknowledged only when it ends, and handed out again when the process
# running it dies.
CELERY_TASKS = """
import os

import redis
from celery import Celery

import munsit_progress

URL = os.environ["ENGINE_REDIS_URL"]
app = Celery("engine_tasks", broker=URL, backend=URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
store = redis.Redis.from_url(URL)


def content_lock(key):
    return store.lock("munsit-lock:" + key, timeout=60)


@app.task
def denoise(path, output, base_url, api_key):
    done = munsit_progress.denoise(
        path, output, api_key=api_key, base_url=base_url, timeout=90, lock=content_lock
    )
    return done.denoise_id
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process, grace=10.0):
    """SIGTERM, then SIGKILL what is left of the process group we started."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        pass
    process.wait(5)


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of our own on a free loopback port, for this test only."""
    import shutil

    redis = pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = "redis://127.0.0.1:%d/0" % port
    try:

        def answers():
            try:
                return redis.Redis.from_url(url, socket_timeout=1).ping()
            except redis.RedisError:
                return False

        assert wait_until(answers, 10, step=0.05), "redis-server did not answer PING"
        yield url
    finally:
        stop(process, grace=5)


def children_of(pid):
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.engines
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds pool processes in /proc")
def test_celery_with_a_pool_process_killed_pays_once_per_input(engine_server, tmp_path, redis_url):
    celery = pytest.importorskip("celery")
    paths = make_inputs(tmp_path / "in", ENGINE_INPUTS)
    out = tmp_path / "out"
    out.mkdir()
    api = TimedAPI(engine_server)
    engine_server.serve(api)
    (tmp_path / "engine_tasks.py").write_text(CELERY_TASKS)
    env = dict(
        os.environ,
        ENGINE_REDIS_URL=redis_url,
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.path.dirname(os.path.abspath(mp.__file__))]),
    )
    log = open(str(tmp_path / "worker.log"), "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "engine_tasks", "worker", "--pool=prefork"]
        + ["--concurrency=3", "-O", "fair", "--prefetch-multiplier=1", "-l", "warning"]
        + ["--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=str(tmp_path),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    app = celery.Celery("engine_tasks", broker=redis_url, backend=redis_url)
    tasks = []
    try:
        assert wait_until(lambda: len(children_of(worker.pid)) == 3, 30, step=0.1), (
            "the worker did not start its pool"
        )
        tasks += [
            app.send_task(
                "engine_tasks.denoise",
                args=[path, str(out / os.path.basename(path)), engine_server.base_url, KEY],
            )
            for path in paths
        ]
        assert wait_until(lambda: downloads(engine_server) >= 6 and api.following == 3, 60), (
            "never saw six results and three jobs followed"
        )
        victim = sorted(children_of(worker.pid))[0]
        os.kill(victim, signal.SIGKILL)
        end = time.monotonic() + ENGINE_LIMIT
        ids = [task.get(timeout=max(1.0, end - time.monotonic())) for task in tasks]
    finally:
        # A result dropped later, once redis is gone, retries at exit.
        tasks.clear()
        gc.collect()
        app.close()
        stop(worker)
        log.close()
        # Shown by pytest when the test fails.
        print((tmp_path / "worker.log").read_text(errors="replace")[-4000:])
    assert len(set(ids)) == ENGINE_INPUTS
    assert_each_input_paid_once_and_saved_whole(api, paths, out)
    assert followed_again(api) >= 1  # the killed task was run again


# --------------------------------------------------------------------------
# Behind a proxy: a real squid on loopback, with basic auth, a TLS front and
# a private CA (slow; .ci/run installs squid and runs them: -m proxy)
# --------------------------------------------------------------------------

SQUID = shutil.which("squid") or shutil.which("squid", path="/usr/sbin:/sbin")
SQUID_AUTH = "/usr/lib/squid/basic_ncsa_auth"
OPENSSL = shutil.which("openssl")
PROXY_USER = "cron"
PROXY_PASSWORD = "pr0xy-5ecret-pa55"
# urllib3 1.26 and later speak TLS to an https:// proxy and TLS again, inside
# it, to the API; 1.25 cannot.
TLS_IN_TLS = hasattr(mp, "_TLS_IN_TLS") and mp._TLS_IN_TLS


def with_squid(function):
    """Slow, a proxy test, and skipped where squid or openssl is missing."""
    needs = pytest.mark.skipif(
        not (SQUID and os.path.exists(SQUID_AUTH) and OPENSSL),
        reason="needs squid (with basic_ncsa_auth) and openssl",
    )
    return pytest.mark.slow(pytest.mark.proxy(needs(function)))


def openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=str(cwd), check=True, capture_output=True, timeout=30)


class PrivateCA:
    """A CA made with openssl, and a certificate it signed for 127.0.0.1."""

    def __init__(self, folder):
        folder.mkdir(exist_ok=True)
        self.ca = str(folder / "ca.pem")
        self.cert = str(folder / "leaf.pem")
        self.key = str(folder / "leaf.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=Munsit test private CA", cwd=folder)  # fmt: skip
        openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1",
                cwd=folder)  # fmt: skip
        (folder / "leaf.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "authorityKeyIdentifier=keyid\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
                cwd=folder)  # fmt: skip

    def server_context(self):
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


class Squid:
    """squid on a free loopback port, in the foreground, with basic auth and
    no cache; CONNECT allowed to any port (the test servers' are not 443)."""

    def __init__(self):
        import pathlib
        import tempfile

        # Run as root, squid drops to its own user, which must reach these
        # files: not under pytest's private tmp folder.
        folder = pathlib.Path(tempfile.mkdtemp(prefix="munsit-squid-"))
        os.chmod(str(folder), 0o777)
        hashed = subprocess.run(
            [OPENSSL, "passwd", "-apr1", PROXY_PASSWORD],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        (folder / "passwd").write_text("%s:%s\n" % (PROXY_USER, hashed))
        self.port = free_port()
        self.access_log = folder / "access.log"
        (folder / "squid.conf").write_text(
            "\n".join(
                [
                    "http_port 127.0.0.1:%d" % self.port,
                    "pid_filename %s" % (folder / "squid.pid"),
                    "cache_log %s" % (folder / "cache.log"),
                    "access_log stdio:%s squid" % self.access_log,
                    "cache_store_log none",
                    "coredump_dir %s" % folder,
                    "cache deny all",
                    "cache_mem 8 MB",
                    "shutdown_lifetime 0 seconds",
                    "dns_nameservers 127.0.0.1",
                    "auth_param basic program %s %s" % (SQUID_AUTH, folder / "passwd"),
                    "auth_param basic realm munsit-test",
                    "acl authed proxy_auth REQUIRED",
                    "acl CONNECT method CONNECT",
                    "acl test_ports port 1024-65535",
                    "http_access deny CONNECT !test_ports",
                    "http_access allow authed",
                    "http_access deny all",
                    "",
                ]
            )
        )
        for name in os.listdir(str(folder)):
            os.chmod(str(folder / name), 0o666)
        self.process = subprocess.Popen(
            [SQUID, "-N", "-f", str(folder / "squid.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(str(folder / "stderr.txt"), "wb"),
        )
        self._folder = folder
        end = time.monotonic() + 30
        while time.monotonic() < end and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError(
            "squid did not start: %s%s"
            % (
                (folder / "stderr.txt").read_text(errors="replace")[-2000:],
                (folder / "cache.log").read_text(errors="replace")[-2000:]
                if (folder / "cache.log").exists()
                else "",
            )
        )

    def url(self, password=PROXY_PASSWORD):
        return "http://%s:%s@127.0.0.1:%d" % (PROXY_USER, password, self.port)

    def log(self):
        """The lines of its access log."""
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(str(self._folder), ignore_errors=True)


class TLSFront:
    """An https:// proxy: TLS on a loopback port, each connection relayed to
    squid, so that the client speaks TLS to the proxy (and TLS again, inside
    it, to an https API)."""

    LIFETIME = 120.0

    def __init__(self, context, target_port):
        self._context = context
        self._target = target_port
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, password=PROXY_PASSWORD):
        return "https://%s:%s@127.0.0.1:%d" % (PROXY_USER, password, self.port)

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self):
        end = time.monotonic() + self.LIFETIME
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn):
        import select

        upstream = None
        try:
            conn.settimeout(5)
            tls = self._context.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self._target), 5)
            end = time.monotonic() + self.LIFETIME
            # One thread per connection reads and writes both sides: an
            # SSLSocket is not to be used by two threads at once.
            while not self._stop.is_set() and time.monotonic() < end:
                ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.05)[0]
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is tls else tls).sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()


@pytest.fixture(scope="module")
def proxy_setup(tmp_path_factory):
    """squid, its TLS front, and the private CA both it and the API use."""
    folder = tmp_path_factory.mktemp("proxy")
    ca = PrivateCA(folder / "ca")
    squid = Squid()
    front = TLSFront(ca.server_context(), squid.port)
    yield ca, squid, front
    front.close()
    squid.close()


PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def clear_proxy_env(monkeypatch):
    """No proxy setting of this machine's may take part (NO_PROXY often
    names 127.0.0.1)."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# (the API's scheme, the proxy's scheme): a plain-http proxy forwarding the
# request, CONNECT through it, and the https proxy both ways (TLS in TLS for
# an https API).
ROUTES = [("http", "http"), ("https", "http"), ("http", "https"), ("https", "https")]
ROUTE_IDS = ["http-api,http-proxy", "https-api,CONNECT", "http-api,https-proxy", "TLS-in-TLS"]


@pytest.fixture(params=ROUTES, ids=ROUTE_IDS)
def route(request, proxy_setup, monkeypatch):
    """An API server behind the proxy, the environment that sends the client
    there (trusting the private CA), and the proxy's URL with its password."""
    api_scheme, proxy_scheme = request.param
    if proxy_scheme == "https" and not TLS_IN_TLS:
        pytest.skip("urllib3 %s cannot speak TLS to an https proxy" % mp.urllib3.__version__)
    ca, squid, front = proxy_setup
    clear_proxy_env(monkeypatch)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca.ca)
    srv = Server(tls=ca.server_context() if api_scheme == "https" else None)
    proxy = (front if proxy_scheme == "https" else squid).url
    yield srv, proxy, "%s_PROXY" % api_scheme.upper(), squid
    srv.close()


@with_squid
def test_an_upload_and_its_job_go_through_the_proxy(route, monkeypatch, audio_file, tmp_path):
    server, proxy, variable, squid = route
    monkeypatch.setenv(variable, proxy())
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    seen = len(squid.log())
    done = mp.denoise(
        audio_file, str(tmp_path / "out.wav"), api_key=KEY, base_url=server.base_url, timeout=30
    )
    assert [job["id"] for job in api.jobs] == [done.denoise_id]
    assert (tmp_path / "out.wav").read_bytes() == open(audio_file, "rb").read()
    through = [line for line in squid.log()[seen:] if " %s " % PROXY_USER in line]
    assert through, "nothing went through the proxy"
    assert not [line for line in squid.log() if KEY in line]


@with_squid
def test_events_arrive_promptly_through_the_proxy(route, monkeypatch):
    server, proxy, variable, _ = route
    monkeypatch.setenv(variable, proxy())
    sent = []

    def script(conn, request, srv):
        conn.sendall(head(200, {"Content-Type": "text/event-stream", "Connection": "close"}))
        sent.append(time.monotonic())
        conn.sendall(processing(10))
        hold(conn, srv, 10)

    server.serve(script)
    events = iter_events(JOB, api_key=KEY, base_url=server.base_url, read_timeout=20)
    try:
        assert next(events) == ProcessingEvent(10)
        delay = time.monotonic() - sent[0]
    finally:
        events.close()
    assert delay < 1.0  # milliseconds in practice; a buffering proxy would hold it 10 s


TRICKLED_HEAD = list(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Slow: " + b"a" * 500)


@with_squid
def test_the_deadline_holds_through_the_proxy_against_trickled_headers(route, monkeypatch):
    server, proxy, variable, _ = route
    monkeypatch.setenv(variable, proxy())
    server.serve(continues_forever(0.5, [bytes([byte]) for byte in TRICKLED_HEAD], limit=30))
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        wait(JOB, api_key=KEY, base_url=server.base_url, timeout=3, retry=FAST)
    assert time.monotonic() - started < 6  # 3.0 s; through TLS in TLS it was over 15 s


@with_squid
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_a_batch_behind_an_https_proxy(proxy_setup, monkeypatch, tmp_path):
    if not TLS_IN_TLS:
        pytest.skip("urllib3 %s cannot speak TLS to an https proxy" % mp.urllib3.__version__)
    ca, _, front = proxy_setup
    paths = make_inputs(tmp_path / "in", 3)
    server = Server(tls=ca.server_context())

    def endless(conn, request, srv):
        stream(processing(10), processing(20), delay=60)(conn, request, srv)

    api = FakeAPI("ok", echo=True, progress=endless)
    server.serve(api)
    clear_proxy_env(monkeypatch)
    env = dict(os.environ, MUNSIT_API_KEY=KEY, HTTPS_PROXY=front.url(), REQUESTS_CA_BUNDLE=ca.ca)
    command = [sys.executable, MODULE, "denoise", *paths, "-o", str(tmp_path / "out")]
    command += ["--base-url", server.base_url, "--jobs", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if sum(r.path.endswith("/progress") for r in list(server.requests)) >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.3)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        took = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        server.close()
    assert process.returncode == 130, stderr
    assert took < 10  # about 0.1 s; its connections could not be cut and held it
    assert b"Traceback" not in stderr


@with_squid
def test_a_refused_proxy_login_is_tried_once_exits_3_and_names_the_proxy(
    route, audio_file, tmp_path
):
    server, proxy, variable, squid = route
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    seen = len(squid.log())
    result = run_cli(
        "denoise",
        audio_file,
        "-o",
        str(tmp_path / "out.wav"),
        "--base-url",
        server.base_url,
        env={variable: proxy("wrong-" + PROXY_PASSWORD)},
        timeout=120,
    )
    refused = [line for line in squid.log()[seen:] if "/407 " in line]
    assert len(refused) == 1, refused
    assert result.returncode == mp.EXIT_REJECTED, result.stderr
    shown = proxy().split("@")[0].split("//")[0] + "//" + proxy().split("@")[1]
    assert "the proxy %s refused its login" % shown in result.stderr
    assert "check the proxy's user name and password" in result.stderr
    assert PROXY_PASSWORD not in result.stderr + result.stdout
    assert not api.jobs


@with_squid
def test_a_batch_stops_sending_after_the_proxy_refused_its_login(
    proxy_setup, monkeypatch, tmp_path
):
    ca, squid, _ = proxy_setup
    clear_proxy_env(monkeypatch)
    server = Server(tls=ca.server_context())
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    paths = make_inputs(tmp_path / "in", 4)
    seen = len(squid.log())
    try:
        result = batch_cli(
            server,
            paths,
            tmp_path / "out",
            "--jobs",
            "1",
            env={"HTTPS_PROXY": squid.url("wrong"), "REQUESTS_CA_BUNDLE": ca.ca},
            timeout=120,
        )
    finally:
        server.close()
    assert result.returncode == mp.EXIT_REJECTED, result.stderr
    assert len([line for line in squid.log()[seen:] if "/407 " in line]) == 1
    assert result.stderr.count("the proxy refused its login for another file") == 3
    assert not api.jobs


@with_squid
@pytest.mark.parametrize("api", ["https", "http"])
def test_an_https_proxy_whose_certificate_is_untrusted_exits_8_naming_it(
    proxy_setup, monkeypatch, tls_server, server, api
):
    if not TLS_IN_TLS:
        pytest.skip("urllib3 %s cannot speak TLS to an https proxy" % mp.urllib3.__version__)
    _, _, front = proxy_setup
    clear_proxy_env(monkeypatch)
    # tls_server's REQUESTS_CA_BUNDLE trusts the API, not the private CA;
    # requests alone would not check the proxy's certificate for an http URL.
    base_url = (tls_server if api == "https" else server).base_url
    variable = "%s_PROXY" % api.upper()
    result = run_cli(JOB, "--base-url", base_url, env={variable: front.url()})
    assert result.returncode == mp.EXIT_CERTIFICATE, result.stderr
    assert "cannot verify the certificate of the proxy https://127.0.0.1:%d" % front.port in (
        result.stderr
    )
    assert "REQUESTS_CA_BUNDLE" in result.stderr
    assert PROXY_PASSWORD not in result.stderr


# Without squid: a proxy that is down, one that never answers, an untrusted
# certificate.  Quick, and in every matrix row.


@pytest.mark.proxy
def test_proxy_errors_are_transport_errors_a_refused_login_and_a_certificate_final():
    login = mp.ProxyAuthenticationError("refused", "http://proxy:3128")
    certificate = mp.CertificateError("cannot verify")
    assert isinstance(login, mp.ProxyError) and isinstance(certificate, TransportError)
    assert not mp.RetryPolicy._retryable(login) and not mp.RetryPolicy._retryable(certificate)
    assert mp._exit_status(login) == mp.EXIT_REJECTED == 3
    assert mp._exit_status(certificate) == mp.EXIT_CERTIFICATE == 8
    assert "EXIT_CERTIFICATE" in mp.__all__ and "8    a certificate" in mp._EPILOG


@pytest.mark.proxy
def test_a_proxy_that_is_down_is_named_with_its_cause_in_words(monkeypatch, tls_server):
    clear_proxy_env(monkeypatch)
    port = free_port()
    monkeypatch.setenv(
        "HTTPS_PROXY", "http://%s:%s@127.0.0.1:%d" % (PROXY_USER, PROXY_PASSWORD, port)
    )
    with pytest.raises(mp.ProxyError) as info:
        wait_on(tls_server, retry=RetryPolicy(max_retries=0))
    text = str(info.value)
    assert text == "cannot reach the proxy http://127.0.0.1:%d (for %s): connection refused" % (
        port,
        mp._origin_text(tls_server.origin),
    )
    assert info.value.proxy == "http://127.0.0.1:%d" % port
    assert mp.RetryPolicy._retryable(info.value) and mp._exit_status(info.value) == mp.EXIT_GAVE_UP


@pytest.mark.proxy
def test_a_proxy_that_never_answers_connect_is_said_not_to_answer(monkeypatch, tls_server):
    clear_proxy_env(monkeypatch)
    silent = Server()
    silent.serve(lambda conn, request, srv: hold(conn, srv, 20))
    monkeypatch.setenv("HTTPS_PROXY", silent.origin)
    started = time.monotonic()
    try:
        with pytest.raises(mp.ProxyError) as info:
            wait_on(tls_server, connect_timeout=1, retry=RetryPolicy(max_retries=0))
    finally:
        silent.close()
    assert time.monotonic() - started < 5
    assert str(info.value) == (
        "the proxy http://127.0.0.1:%d did not answer within 1 s when asked to connect to %s"
        % (silent.port, mp._origin_text(tls_server.origin))
    )
    assert silent.requests[0].method == "CONNECT"


@pytest.mark.proxy
def test_an_untrusted_certificate_exits_8_saying_how_to_trust_a_private_ca(monkeypatch, tls_server):
    clear_proxy_env(monkeypatch)
    import certifi  # requests' own bundle: it knows no private CA

    result = run_cli(
        JOB, "--base-url", tls_server.base_url, env={"REQUESTS_CA_BUNDLE": certifi.where()}
    )
    assert result.returncode == mp.EXIT_CERTIFICATE == 8, result.stderr
    assert (
        "cannot verify the certificate of %s" % mp._origin_text(tls_server.origin) in result.stderr
    )
    assert "set REQUESTS_CA_BUNDLE to that CA's certificate" in result.stderr
    assert not tls_server.requests


@pytest.mark.proxy
@pytest.mark.skipif(TLS_IN_TLS, reason="only urllib3 1.25 lacks TLS in TLS")
def test_an_https_proxy_for_https_without_tls_in_tls_is_a_configuration_error(monkeypatch):
    clear_proxy_env(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "https://127.0.0.1:%d" % free_port())
    with pytest.raises(ConfigurationError, match="needs urllib3 1.26 or later"):
        wait(JOB, api_key=KEY, base_url="https://127.0.0.1:%d/api/v1" % free_port())


# --------------------------------------------------------------------------
# The Client: configured once, one pool, safe to share
# --------------------------------------------------------------------------


class KeepAliveList:
    """A job list on 127.0.0.1 that keeps connections alive (HTTP/1.1), and
    counts the connections clients open to it.  stdlib's server; stopped by
    close(), and its threads are daemons bounded by a socket timeout."""

    def __init__(self):
        import http.server

        outer = self
        self.connections = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5

            def setup(self):
                super().setup()
                outer.connections += 1

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"[]")

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        self.base_url = "http://127.0.0.1:%d/api/v1" % self._server.server_address[1]

    def close(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def keep_alive():
    srv = KeepAliveList()
    yield srv
    srv.close()


def test_a_client_keeps_one_connection_across_calls(keep_alive):
    with mp.Client("demo-key-0123", keep_alive.base_url, retry=FAST) as client:
        for _ in range(5):
            assert client.list_jobs() == []
    assert keep_alive.connections == 1
    # The module functions make a client, and a pool, per call.
    for _ in range(3):
        mp.list_jobs(api_key="demo-key-0123", base_url=keep_alive.base_url)
    assert keep_alive.connections == 4


def test_a_given_session_is_used_and_left_open(keep_alive):
    session = requests.Session()
    try:
        with mp.Client("demo-key-0123", keep_alive.base_url, session=session) as client:
            client.list_jobs()
        with mp.Client("demo-key-0123", keep_alive.base_url, session=session) as client:
            client.list_jobs()
        assert keep_alive.connections == 1
    finally:
        session.close()


def test_one_client_shared_by_threads_denoises_each_file_once(tmp_path):
    with mp.demo_server(duration=0.3) as base_url:
        _denoise_from_threads(base_url, tmp_path)


def _denoise_from_threads(base_url, tmp_path):
    inputs = []
    for n in range(6):
        path = tmp_path / ("in%d.wav" % n)
        path.write_bytes(mp._demo_wav() + bytes([n]) * (n + 1))
        inputs.append(path)
    results, errors = {}, []
    with mp.Client("demo-key-0123", base_url, retry=FAST) as client:

        def work(path):
            try:
                out = str(path) + ".out"
                results[path] = client.denoise(str(path), out, timeout=60)
            except BaseException as exc:  # shown by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(path,)) for path in inputs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert not errors
        jobs = client.list_jobs()
    # One paid job per content, and each output is its own input's result.
    assert len(jobs) == len(inputs)
    assert len({job.denoise_id for job in jobs}) == len(inputs)
    for path in inputs:
        assert (tmp_path / (path.name + ".out")).read_bytes() == path.read_bytes()
    assert len({done.denoise_id for done in results.values()}) == len(inputs)


def test_each_call_of_a_shared_client_has_its_own_deadline(server):
    def script(conn, request, srv):
        if request.path.endswith("/progress"):
            # Says nothing: only the deadline of this call ends it.
            srv.client_closed.wait(10)
            return
        body = b"[]"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )

    server.serve(script)
    client = mp.Client(KEY, server.base_url, retry=FAST)
    outcome = {}

    def follow():
        try:
            client.wait(JOB, timeout=1.0)
        except MunsitError as exc:
            outcome["wait"] = exc

    thread = threading.Thread(target=follow)
    started = time.monotonic()
    thread.start()
    assert client.list_jobs(timeout=30) == []
    thread.join(20)
    client.close()
    assert isinstance(outcome["wait"], WaitTimeoutError)
    assert outcome["wait"].denoise_id == JOB
    assert time.monotonic() - started < 15


def test_a_client_checks_its_settings_when_made_and_its_key_when_used(monkeypatch, server):
    monkeypatch.delenv("MUNSIT_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="base_url"):
        mp.Client(KEY, "ftp://example.com/api")
    with pytest.raises(ConfigurationError, match="read_timeout"):
        mp.Client(KEY, server.base_url, read_timeout=0)
    with pytest.raises(ConfigurationError, match="retry"):
        mp.Client(KEY, server.base_url, retry=3)
    client = mp.Client(base_url=server.base_url)  # no key yet: not needed to make one
    with pytest.raises(ConfigurationError, match="no API key"):
        client.list_jobs()
    with pytest.raises(ConfigurationError, match="no API key"):
        client.wait(JOB)
    assert server.requests == []
    monkeypatch.setenv("MUNSIT_API_KEY", KEY)
    assert "<munsit_progress.Client http://127.0.0.1:" in repr(mp.Client(base_url=server.base_url))


def test_a_closed_client_refuses_calls(server):
    with mp.Client(KEY, server.base_url) as client:
        pass
    for call in (
        lambda: client.list_jobs(),
        lambda: client.wait(JOB),
        lambda: client.iter_events(JOB),
        lambda: client.submit(__file__),
    ):
        with pytest.raises(ConfigurationError, match="closed"):
            call()
    assert server.requests == []


def test_the_module_functions_are_the_client_methods():
    import inspect

    connection = {"api_key", "base_url", "session", "connect_timeout", "read_timeout"}
    connection |= {"retry", "allow_http"}
    for name in ("denoise", "denoise_many", "submit", "list_jobs", "wait", "iter_events"):
        function = set(inspect.signature(getattr(mp, name)).parameters)
        method = set(inspect.signature(getattr(mp.Client, name)).parameters) - {"self"}
        assert function - connection == method, name
    function = set(inspect.signature(mp.download).parameters)
    method = set(inspect.signature(mp.Client.download).parameters) - {"self"}
    assert function - connection == method


def test_the_readme_examples_against_the_simulator_run(tmp_path, monkeypatch):
    """The README's examples that use demo_server() run as written."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
    if not os.path.exists(path):
        pytest.skip("the module and its tests were copied without the README")
    with open(path, encoding="utf-8") as handle:
        readme = handle.read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "demo_server(" in b]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.wav").write_bytes(mp._demo_wav())
    for block in blocks:
        code = block.replace("duration=1.0", "duration=0.2")
        exec(compile(code, "README.md", "exec"), {"__name__": "readme", "munsit_progress": mp})
    assert (tmp_path / "out.wav").read_bytes() == (tmp_path / "in.wav").read_bytes()


def test_a_client_can_be_sent_to_another_process(keep_alive):
    # Task engines pickle what a task is given; the copy has the settings.
    client = mp.Client("demo-key-0123", keep_alive.base_url, retry=FAST, read_timeout=7)
    copy = pickle.loads(pickle.dumps(client))
    assert copy.base_url == keep_alive.base_url and copy.retry == FAST
    assert copy.list_jobs() == []
    client.close()
    copy.close()


def test_denoise_into_a_running_batch_s_folder_is_refused_before_sending(server, tmp_path):
    (tmp_path / "a.wav").write_bytes(mp._demo_wav())
    (tmp_path / "out").mkdir()
    server.serve(FakeAPI("ok", echo=True))
    holder = mp._Journal(str(tmp_path / "out"))  # a batch, running there
    try:
        with mp.Client(KEY, server.base_url, retry=QUICK) as client:
            with pytest.raises(mp.BatchBusyError):
                client.denoise(str(tmp_path / "a.wav"), str(tmp_path / "out" / "a.wav"))
    finally:
        holder.close()
    assert_nothing_sent(server)


def test_a_progress_bar_subclass_and_a_display_of_ones_own_are_called_as_documented(tmp_path):
    calls = []

    class MyBar(mp.ProgressBar):
        def __call__(self, event):
            calls.append("call")
            super().__call__(event)

        def upload(self, sent, total):
            calls.append("upload")
            super().upload(sent, total)

        def transfer(self, received, total):
            calls.append("transfer")
            super().transfer(received, total)

        def finish(self, outcome=None):
            calls.append("finish")
            super().finish(outcome)

    class Display:  # not a ProgressBar: duck-typed, as the docstrings allow
        def __init__(self):
            self.log = []

        def __call__(self, event):
            self.log.append("call")

        def update(self, event):
            self.log.append("update")

        def upload(self, sent, total):
            self.log.append("upload")

        def transfer(self, received, total):
            self.log.append("transfer")

        def finish(self, outcome=None):
            self.log.append("finish")

    source = tmp_path / "in.wav"
    source.write_bytes(mp._demo_wav())
    with mp.demo_server(duration=0.3) as base_url:
        client = mp.Client("demo-key-0123", base_url, retry=FAST)
        text = io.StringIO()
        done = client.denoise(
            str(source), str(tmp_path / "a.wav"), on_progress=MyBar(text, mode="log")
        )
        assert {"call", "upload", "transfer", "finish"} <= set(calls)
        assert "submitted as job %s" % done.denoise_id in text.getvalue()
        calls.clear()
        client.download(done, str(tmp_path / "b.wav"), on_progress=MyBar(io.StringIO(), mode="log"))
        assert set(calls) == {"transfer", "finish"}
        display = Display()
        client.download(done, str(tmp_path / "c.wav"), on_progress=display)
        assert "transfer" in display.log and display.log[-1] == "finish"
        display = Display()
        client.wait(done.denoise_id, on_progress=display.update)
        assert display.log[-1] == "finish"  # a bound method's owner is finished
        display = Display()
        client.submit(str(source), on_upload=display.transfer)  # adopted: nothing sent
        client.submit(str(source), on_upload=display.transfer, reuse=False)
        assert "upload" in display.log  # its owner's upload, as 0.7 chose
        client.close()
    assert (tmp_path / "c.wav").read_bytes() == source.read_bytes()


def test_single_files_saved_at_once_into_a_batch_s_folder_do_not_exclude_each_other(tmp_path):
    names = ("a.wav", "b.wav", "c.wav")
    for n, name in enumerate(names):
        (tmp_path / name).write_bytes(mp._demo_wav() + bytes([n]) * (n + 1))
    out = tmp_path / "out"
    with mp.demo_server(duration=0.5) as base_url, mp.Client("demo-key-0123", base_url) as client:
        for result in client.denoise_many([str(tmp_path / "a.wav")], str(out)):
            assert result.error is None  # the folder is a batch's now: its lock file stays
        errors = []

        def one(name):
            try:
                client.denoise(str(tmp_path / name), str(out / name), timeout=60)
            except BaseException as exc:  # shown by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(name,)) for name in names[1:]]
        for thread in threads:
            thread.start()
        held = mp._batch_folder_held(str(out / "x.wav"))
        with held:  # a third single file, while they run
            with pytest.raises(mp.BatchBusyError):
                mp._Journal(str(out))  # a batch cannot start meanwhile
        for thread in threads:
            thread.join(60)
    assert not errors
    for name in names[1:]:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes()


def test_a_dry_run_refuses_what_the_run_refuses_before_it_starts(server, tmp_path):
    api = FakeAPI("ok", echo=True)
    server.serve(api)
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "a.wav"
    inside.write_bytes(mp._demo_wav())
    (tmp_path / "b.wav").write_bytes(mp._demo_wav() + b"b")
    paths = [str(inside), str(tmp_path / "b.wav")]
    dry = batch_cli(server, paths, out, "--dry-run")
    run = batch_cli(server, paths, out)
    assert dry.returncode == run.returncode == mp.EXIT_USAGE, (dry.stdout, run.stderr)
    assert "is in the output folder" in dry.stderr
    # An input the journal knows by its stat is still checked, as the run checks it.
    text = tmp_path / "c.txt"
    text.write_bytes(mp._demo_wav())
    old = time.time() - 7200
    os.utime(str(text), (old, old))
    out = tmp_path / "out2"
    pair = [str(tmp_path / "b.wav"), str(text)]
    first = batch_cli(server, pair, out, "--no-check", "--max-files", "1", "--jobs", "1")
    assert first.returncode != 0  # c.txt held back, but its content is noted
    dry = batch_cli(server, [str(text)], out, "--dry-run")
    run = batch_cli(server, [str(text)], out)
    assert dry.returncode == run.returncode == mp.EXIT_USAGE, (dry.stdout, run.stderr)
    assert len(api.posts) == 1


def test_the_demo_makes_no_job_of_an_upload_cut_short(tmp_path):
    with mp.demo_server(duration=0.2, state_dir=str(tmp_path / "state")) as base_url:
        port = int(base_url.split(":")[2].split("/")[0])
        head = (
            b'--b\r\nContent-Disposition: form-data; name="audio"; filename="cut.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        whole = len(head) + 100000 + len(b"\r\n--b--\r\n")
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(
            b"POST /api/v1/denoise HTTP/1.1\r\nHost: x\r\nx-api-key: demo\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: %d\r\n\r\n" % whole
        )
        conn.sendall(head + b"A" * 30000)  # 30% of the file, then the client is gone
        conn.shutdown(socket.SHUT_WR)
        answer = conn.recv(65536)
        conn.close()
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
        assert mp.list_jobs(api_key="demo", base_url=base_url) == []


def test_a_client_batch_wider_than_its_pool_drops_no_connection(tmp_path, caplog):
    paths = make_inputs(tmp_path / "in", 24)
    with mp.demo_server(duration=1.0) as base_url, mp.Client("demo-key-0123", base_url) as client:
        with caplog.at_level(logging.WARNING, logger="urllib3"):
            results = list(client.denoise_many(paths, str(tmp_path / "out"), concurrency=24))
    assert all(result.error is None for result in results) and len(results) == 24
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_a_batch_s_on_progress_that_cannot_be_called_is_refused_before_anything(tmp_path):
    paths = make_inputs(tmp_path / "in", 1)
    with pytest.raises(ConfigurationError, match="on_progress"):
        mp.denoise_many(paths, str(tmp_path / "out"), api_key=KEY, on_progress="bar")
    assert not (tmp_path / "out").exists()
