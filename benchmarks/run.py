"""Benchmark munsit_progress against the other ways to read a Munsit stream.

    python benchmarks/run.py                  # full run: about 6 minutes on 2 cores
    python benchmarks/run.py --quick          # a check that the harness works: about 1 minute
    python benchmarks/run.py --json out.json  # where the JSON copy of the table goes
    python benchmarks/run.py --only throughput            # one section (repeatable)
    python benchmarks/run.py --profile        # cProfile of munsit_progress on the throughput case
    python benchmarks/run.py --subject old/munsit_progress.py   # measure another version

The first run creates benchmarks/.venv with the peers (requests, httpx,
httpx-sse, sseclient-py, requests-sse) from PyPI; later runs reuse it.
munsit_progress.py is copied from the repository root at the start (so that
one run measures one version while the checkout is being edited) and
imported from that copy; the JSON records its SHA-256.

One loopback server (stdlib sockets, threads of this process, 127.0.0.1
only) serves Munsit-shaped streams; every client runs in its own subprocess
(benchmarks/clients.py) and parses every event's JSON.  Figures are the
median and the worst of several runs; ratios are to munsit_progress.  The
table goes to stdout, the same data with the machine's details to JSON.
Nothing here asserts a timing: --quick is what CI runs to see that it works.
The exit status is 1 when a client did not read a stream in full (the big
line aside), which means the harness or a client is broken.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.path.join(HERE, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
CLIENTS_PY = os.path.join(HERE, "clients.py")
# The module under test is copied here at the start, so that one run measures
# one version even while the checkout is being edited.
SUBJECT_DIR = os.path.join(VENV, "subject")

PEER_PACKAGES = ["requests", "httpx", "httpx-sse", "sseclient-py", "requests-sse"]
DENOISE_ID = "5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1"
CLIENTS = [
    "munsit_progress",
    "docs-httpx",
    "docs-requests",
    "sseclient-py",
    "requests-sse",
    "httpx-sse",
    "floor",
]
FRAMINGS = ["chunked", "close", "http10", "gzip"]
SUBJECT = "munsit_progress"


class Settings:
    """How much of each measurement a mode runs."""

    def __init__(self, quick):
        self.quick = quick
        self.prompt_events = 15 if quick else 50
        self.prompt_runs = 1 if quick else 3
        self.prompt_interval = 0.020
        self.slow_events = 3 if quick else 10
        self.slow_interval = 2.0
        self.recovery_runs = 2 if quick else 10
        self.throughput_events = 20000 if quick else 200000
        self.throughput_runs = 2 if quick else 5
        self.memory_events = 100000 if quick else 2000000
        self.memory_runs = 1 if quick else 2
        self.big_line_mb = 10 if quick else 50
        self.big_line_limit = 5.0 if quick else 20.0
        self.startup_runs = 5 if quick else 30
        # The server stops by itself after this long or this many connections.
        self.server_lifetime = 600.0 if quick else 3600.0
        self.server_connections = 2000


# --------------------------------------------------------------------------
# The loopback server
# --------------------------------------------------------------------------


def processing_event(pct, stamp_ns):
    """An ~80-byte processing event carrying the server's clock in its message."""
    return (
        'data: {"stage":"processing","pct":%d,"message":"Denoising (t=%d)"}\n\n' % (pct, stamp_ns)
    ).encode("ascii")


class Scenario:
    """What the server sends on one URL: the kind of stream and its framing.

    kinds: ``timed`` (``events`` spaced ``interval`` apart, each stamped as it
    is written), ``bulk`` (``events`` as fast as the socket takes them),
    ``drop`` (a few events, then the connection dropped; the next connection
    starts with an event stamped with the moment of the drop), ``big_line``
    (one ``line_bytes`` data line, then done).
    """

    def __init__(
        self, kind, framing="chunked", events=0, interval=0.0, retry_ms=None, line_bytes=0
    ):
        self.kind = kind
        self.framing = framing
        self.events = events
        self.interval = interval
        self.retry_ms = retry_ms
        self.line_bytes = line_bytes
        self.connections = 0
        self.dropped_at_ns = None
        self.lock = threading.Lock()


class Framer:
    """Writes a response body in one of the framings, one write per piece."""

    HEADS = {
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
        "gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n",
        "close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n",
        "http10": b"HTTP/1.0 200 OK\r\n",
    }

    def __init__(self, conn, framing):
        self.conn = conn
        self.chunked = framing in ("chunked", "gzip")
        self.gzip = zlib.compressobj(6, zlib.DEFLATED, 31) if framing == "gzip" else None
        conn.sendall(
            self.HEADS[framing]
            + b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )

    def send(self, data):
        if self.gzip is not None:
            # A sync flush per event: what a streaming proxy that compresses does.
            data = self.gzip.compress(data) + self.gzip.flush(zlib.Z_SYNC_FLUSH)
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.conn.sendall(data)

    def end(self):
        if self.gzip is not None:
            tail = self.gzip.flush()
            self.conn.sendall(b"%x\r\n%s\r\n" % (len(tail), tail))
        if self.chunked:
            self.conn.sendall(b"0\r\n\r\n")


class LoopbackServer:
    """One listening socket on 127.0.0.1, a thread per connection.

    The accept loop ends after ``lifetime`` seconds or ``max_connections``
    connections, or at stop(); each connection has a socket timeout and a
    deadline, so every loop here ends by itself."""

    CONNECTION_DEADLINE = 300.0
    SOCKET_TIMEOUT = 30.0

    def __init__(self, lifetime, max_connections):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.25)
        self.port = self.listener.getsockname()[1]
        self.lifetime = lifetime
        self.max_connections = max_connections
        self.scenarios = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, name="bench-server", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()

    def add(self, scenario):
        """Register a scenario; return the base URL that serves it."""
        with self.lock:
            key = "s%d" % len(self.scenarios)
            self.scenarios[key] = scenario
        return "http://127.0.0.1:%d/%s/api/v1" % (self.port, key)

    @property
    def done_event(self):
        url = "http://127.0.0.1:%d/result/%s.wav" % (self.port, DENOISE_ID)
        return (
            'data: {"stage":"done","url":"%s","denoiseId":"%s"}\n\n' % (url, DENOISE_ID)
        ).encode("ascii")

    def _accept_loop(self):
        ends = time.monotonic() + self.lifetime
        accepted = 0
        while not self.stopping.is_set() and accepted < self.max_connections:
            if time.monotonic() > ends:
                break
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(self.SOCKET_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            parts = head.split(b" ", 2)
            path = parts[1].decode("ascii", "replace") if len(parts) > 2 else ""
            key = path.split("/")[1] if path.count("/") > 1 else ""
            scenario = self.scenarios.get(key)
            if scenario is None or not path.endswith("/progress"):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            with scenario.lock:
                scenario.connections += 1
                number = scenario.connections
            deadline = time.monotonic() + self.CONNECTION_DEADLINE
            getattr(self, "_send_" + scenario.kind)(conn, scenario, number, deadline)
        except OSError:
            pass  # the client went away (or was killed): nothing to do
        finally:
            conn.close()

    def _past(self, deadline):
        return self.stopping.is_set() or time.monotonic() > deadline

    def _send_timed(self, conn, scenario, number, deadline):
        out = Framer(conn, scenario.framing)
        start = time.monotonic()
        for i in range(scenario.events):
            pause = start + (i + 1) * scenario.interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self._past(deadline):
                return
            pct = 100 * i // max(scenario.events, 1)
            out.send(processing_event(pct, time.monotonic_ns()))
        time.sleep(scenario.interval)
        out.send(self.done_event)
        out.end()

    def _send_bulk(self, conn, scenario, number, deadline):
        out = Framer(conn, scenario.framing)
        block_events = 500
        stamp = time.monotonic_ns()
        block = b"".join(processing_event(i % 101, stamp) for i in range(block_events))
        left = scenario.events
        while left > 0:
            if self._past(deadline):
                return
            if left >= block_events:
                out.send(block)
            else:
                out.send(b"".join(processing_event(i % 101, stamp) for i in range(left)))
            left -= block_events
        out.send(self.done_event)
        out.end()

    def _send_drop(self, conn, scenario, number, deadline):
        out = Framer(conn, scenario.framing)
        if scenario.retry_ms is not None:
            out.send(b"retry: %d\n\n" % scenario.retry_ms)
        if number == 1:
            for pct in range(5):
                time.sleep(0.02)
                out.send(processing_event(pct, time.monotonic_ns()))
            time.sleep(0.02)
            with scenario.lock:
                scenario.dropped_at_ns = time.monotonic_ns()
            # Mid-stream, no terminating chunk: a dropped connection.
            conn.shutdown(socket.SHUT_RDWR)
            return
        # The reconnection: its first event is stamped with the moment of the
        # drop, so the client's delay for it is the whole recovery time.
        out.send(processing_event(50, scenario.dropped_at_ns or time.monotonic_ns()))
        for pct in (60, 70):
            time.sleep(0.02)
            out.send(processing_event(pct, time.monotonic_ns()))
        out.send(self.done_event)
        out.end()

    def _send_big_line(self, conn, scenario, number, deadline):
        out = Framer(conn, scenario.framing)
        out.send(b'data: {"stage":"processing","pct":1,"message":"')
        piece = b"x" * 65536
        left = scenario.line_bytes
        while left > 0:
            if self._past(deadline):
                return
            out.send(piece[:left])
            left -= len(piece)
        out.send(b' (t=%d)"}\n\n' % time.monotonic_ns())
        out.send(self.done_event)
        out.end()


# --------------------------------------------------------------------------
# Running the clients
# --------------------------------------------------------------------------


def child_env():
    env = dict(os.environ)
    for name in list(env):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            del env[name]
    env["PYTHONPATH"] = SUBJECT_DIR
    # Bytecode is cached, as it is after an install (pip compiles) or after a
    # script's first import; the caches go under benchmarks/.venv, not into
    # the repository root.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(VENV, "pycache")
    return env


def read_peak_kb(pid):
    """VmHWM of a live process, for one about to be killed."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run_client(client, base_url, mode, limit=60.0, profile=None):
    """Run one client subprocess; return its result dict (``killed`` on a
    timeout, with the peak RSS read from /proc just before the kill)."""
    command = [VENV_PYTHON, CLIENTS_PY, client, base_url, mode]
    if profile:
        command += ["--profile", profile]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        cwd=SUBJECT_DIR,
        universal_newlines=True,
    )
    lines, errors = [], []
    readers = [
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),
        threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    result = {}
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        result = {
            "killed": True,
            "elapsed": time.monotonic() - started,
            "peak_kb": read_peak_kb(proc.pid),
        }
        proc.kill()
        proc.wait()
    for reader in readers:
        reader.join(10)
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    for item in parsed:
        if "baseline_kb" in item and len(item) == 1:
            result["baseline_kb"] = item["baseline_kb"]
        elif not result.get("killed"):
            result.update(item)
    if not result.get("killed") and "elapsed" not in result:
        result["error"] = "crashed: %s" % "".join(errors).strip()[-300:]
    return result


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def median(values):
    return statistics.median(values) if values else None


def ratio(value, reference):
    if value is None or not reference:
        return None
    return value / reference


def outcome_text(result):
    if result.get("killed"):
        return "no result"
    if "error" in result:
        return result["error"]
    if result.get("done"):
        return "ok"
    return "ended without done"


# --------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------


def measure_promptness(server, settings, log):
    """Delay (ms) from the server's write to the event reaching the loop."""
    table = {}
    for framing in FRAMINGS:
        table[framing] = {}
        for client in CLIENTS:
            if client == "floor" and framing == "gzip":
                table[framing][client] = {"note": "n/a (the floor does not decode gzip)"}
                continue
            delays, problems = [], []
            for _ in range(settings.prompt_runs):
                url = server.add(
                    Scenario("timed", framing, settings.prompt_events, settings.prompt_interval)
                )
                result = run_client(client, url, "delays", limit=60)
                delays += result.get("delays_ms", [])
                if result.get("events") != settings.prompt_events or not result.get("done"):
                    problems.append(outcome_text(result))
            table[framing][client] = {
                "median_ms": median(delays),
                "worst_ms": max(delays) if delays else None,
                "events": len(delays),
                "problems": problems,
            }
            log(
                "promptness %-8s %-16s median %s worst %s"
                % (framing, client, fmt_ms(median(delays)), fmt_ms(max(delays) if delays else None))
            )
        add_ratios(table[framing], "median_ms")
    return table


def measure_slow_job(server, settings, log):
    """One event every 2 s, close-delimited: how far behind each client runs.
    The clients run side by side (they are idle between events)."""
    jobs = []
    for client in CLIENTS:
        url = server.add(Scenario("timed", "close", settings.slow_events, settings.slow_interval))
        jobs.append((client, url))
    results = {}
    threads = [
        threading.Thread(
            target=lambda c=client, u=url: results.__setitem__(
                c,
                run_client(
                    c, u, "delays", limit=settings.slow_events * settings.slow_interval + 40
                ),
            )
        )
        for client, url in jobs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    table = {}
    for client in CLIENTS:
        result = results.get(client, {})
        delays = result.get("delays_ms", [])
        table[client] = {
            "median_ms": median(delays),
            "worst_ms": max(delays) if delays else None,
            "events": len(delays),
            "problems": [] if result.get("done") else [outcome_text(result)],
        }
        log(
            "slow job %-16s median %s worst %s"
            % (client, fmt_ms(median(delays)), fmt_ms(max(delays) if delays else None))
        )
    add_ratios(table, "median_ms")
    return table


def measure_recovery(server, settings, log):
    """wait(): from the dropped connection to the next on_progress call."""
    table = {}
    for label, retry_ms in (("retry: 100", 100), ("no retry field", None)):
        times, problems = [], []
        for _ in range(settings.recovery_runs):
            url = server.add(Scenario("drop", "chunked", retry_ms=retry_ms))
            result = run_client(SUBJECT, url, "recover", limit=40)
            after = [delay for pct, delay in result.get("callbacks", []) if pct == 50]
            if after:
                times.append(after[0])
            else:
                problems.append(outcome_text(result))
        table[label] = {
            "median_ms": median(times),
            "worst_ms": max(times) if times else None,
            "runs": len(times),
            "problems": problems,
        }
        log(
            "recovery %-15s median %s worst %s"
            % (label, fmt_ms(median(times)), fmt_ms(max(times) if times else None))
        )
    return table


def measure_throughput(server, settings, log):
    rates = {client: [] for client in CLIENTS}
    problems = {client: [] for client in CLIENTS}
    for _run in range(settings.throughput_runs):
        for client in CLIENTS:  # round-robin, so that a busy moment hits all alike
            url = server.add(Scenario("bulk", "chunked", settings.throughput_events))
            result = run_client(client, url, "count", limit=120)
            if result.get("events") == settings.throughput_events and result.get("done"):
                # The rate from the first event to the done event: the events
                # after the first, and the done event itself.
                rates[client].append(result["events"] / result["span"])
            else:
                problems[client].append(outcome_text(result))
    table = {}
    for client in CLIENTS:
        table[client] = {
            "median_per_s": median(rates[client]),
            "worst_per_s": min(rates[client]) if rates[client] else None,
            "runs": len(rates[client]),
            "problems": problems[client],
        }
        log("throughput %-16s median %s/s" % (client, fmt_rate(median(rates[client]))))
    add_ratios(table, "median_per_s")
    return table


def measure_memory(server, settings, log):
    long_stream, big_line = {}, {}
    growths = {client: [] for client in CLIENTS}
    problems = {client: [] for client in CLIENTS}
    for _run in range(settings.memory_runs):
        for client in CLIENTS:
            url = server.add(Scenario("bulk", "chunked", settings.memory_events))
            result = run_client(client, url, "count", limit=300)
            if result.get("events") == settings.memory_events and result.get("done"):
                growths[client].append((result["peak_kb"] - result["baseline_kb"]) / 1024.0)
            else:
                problems[client].append(outcome_text(result))
    for client in CLIENTS:
        long_stream[client] = {
            "median_mb": median(growths[client]),
            "worst_mb": max(growths[client]) if growths[client] else None,
            "runs": len(growths[client]),
            "problems": problems[client],
        }
        log("memory %-16s growth %s MB" % (client, fmt_mb(median(growths[client]))))
    add_ratios(long_stream, "median_mb")

    line_bytes = settings.big_line_mb * 1024 * 1024
    for client in CLIENTS:
        runs = []
        for _run in range(settings.memory_runs):
            # Close-delimited: chunk headers would cut the line for the floor.
            url = server.add(Scenario("big_line", "close", line_bytes=line_bytes))
            result = run_client(client, url, "count", limit=settings.big_line_limit)
            peak, base = result.get("peak_kb"), result.get("baseline_kb")
            runs.append(
                {
                    "outcome": big_line_outcome(result),
                    "seconds": result.get("elapsed"),
                    "growth_mb": (peak - base) / 1024.0 if peak and base else None,
                }
            )
            if result.get("killed"):
                break  # a client that hit the limit would only hit it again
        seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
        growths = [r["growth_mb"] for r in runs if r["growth_mb"] is not None]
        big_line[client] = {
            "outcome": runs[0]["outcome"],
            "median_s": median(seconds),
            "worst_s": max(seconds) if seconds else None,
            "median_growth_mb": median(growths),
            "worst_growth_mb": max(growths) if growths else None,
            "runs": runs,
        }
        log(
            "big line %-16s %s after %.2f s, growth %s MB"
            % (
                client,
                runs[0]["outcome"],
                seconds[0] if seconds else float("nan"),
                fmt_mb(median(growths)),
            )
        )
    return long_stream, big_line


def big_line_outcome(result):
    if result.get("killed"):
        return "no result (killed)"
    if "error" in result:
        return "failed: " + result["error"].split(":")[0]
    if result.get("done"):
        return "accepted the line"
    return outcome_text(result)


def measure_startup(settings, log):
    commands = {
        "import munsit_progress": [VENV_PYTHON, "-c", "import munsit_progress"],
        "import requests": [VENV_PYTHON, "-c", "import requests"],
        "munsit_progress.py --help": [VENV_PYTHON, "munsit_progress.py", "--help"],
    }
    env = child_env()
    times = {name: [] for name in commands}
    for run in range(settings.startup_runs + 1):
        for name, command in commands.items():  # interleaved, so drift hits all alike
            started = time.perf_counter()
            subprocess.run(command, cwd=SUBJECT_DIR, env=env, stdout=subprocess.DEVNULL, check=True)
            if run:  # the first round only warms the caches
                times[name].append((time.perf_counter() - started) * 1000)
    table = {
        name: {"median_ms": median(values), "worst_ms": max(values), "runs": len(values)}
        for name, values in times.items()
    }
    table["import cost over requests"] = {
        "median_ms": table["import munsit_progress"]["median_ms"]
        - table["import requests"]["median_ms"]
    }
    for name, row in table.items():
        log("start-up %-28s median %s" % (name, fmt_ms(row["median_ms"])))
    return table


def add_ratios(table, key):
    reference = table.get(SUBJECT, {}).get(key)
    for row in table.values():
        if key in row:
            row["ratio"] = ratio(row[key], reference)


# --------------------------------------------------------------------------
# Targets (from the issue): judged here, never asserted
# --------------------------------------------------------------------------


def harness_problems(results):
    """What says the harness itself is broken: a stream that some client did
    not read in full (the big line excepted: there, failing is an outcome)."""
    found = []
    for section in ("promptness", "slow_job", "recovery", "throughput", "memory"):
        tables = results.get(section, {})
        if section == "promptness":
            rows = {"%s/%s" % (f, c): r for f, t in tables.items() for c, r in t.items()}
        else:
            rows = tables
        for name, row in rows.items():
            for problem in row.get("problems", []):
                found.append("%s %s: %s" % (section, name, problem))
    return found


def judge(results):
    verdicts = []

    def verdict(target, met, measured):
        verdicts.append({"target": target, "met": bool(met), "measured": measured})

    if "promptness" in results:
        for framing, rows in results["promptness"].items():
            row = rows[SUBJECT]
            verdict(
                "promptness, %s: median < 1 ms, worst < 5 ms" % framing,
                row["median_ms"] is not None and row["median_ms"] < 1 and row["worst_ms"] < 5,
                "median %s, worst %s" % (fmt_ms(row["median_ms"]), fmt_ms(row["worst_ms"])),
            )
    if "slow_job" in results:
        row = results["slow_job"][SUBJECT]
        verdict(
            "slow job: never behind (worst < 5 ms)",
            row["worst_ms"] is not None and row["worst_ms"] < 5,
            "worst %s" % fmt_ms(row["worst_ms"]),
        )
    if "recovery" in results:
        # The measured time includes the reconnection itself and the first
        # event; 10 ms is allowed for those on loopback.
        for label, limit in (("retry: 100", 100), ("no retry field", 1000)):
            row = results["recovery"][label]
            verdict(
                "recovery, %s: next event within %d ms (+10 ms to reconnect)" % (label, limit),
                row["worst_ms"] is not None and row["worst_ms"] <= limit + 10,
                "median %s, worst %s" % (fmt_ms(row["median_ms"]), fmt_ms(row["worst_ms"])),
            )
    if "throughput" in results:
        rows = results["throughput"]
        own = rows[SUBJECT]["median_per_s"] or 0
        peers = [r["median_per_s"] or 0 for c, r in rows.items() if c not in (SUBJECT, "floor")]
        best = max(peers) if peers else 0
        floor = rows["floor"]["median_per_s"] or 0
        verdict(
            "throughput: >= 1.2x the fastest peer",
            best and own >= 1.2 * best,
            "%.2fx" % (own / best) if best else "n/a",
        )
        verdict(
            "throughput: >= 70% of the floor",
            floor and own >= 0.7 * floor,
            "%.0f%%" % (100 * own / floor) if floor else "n/a",
        )
    if "memory" in results:
        row = results["memory"][SUBJECT]
        verdict(
            "memory: long stream within 5 MB of the import baseline",
            row["worst_mb"] is not None and row["worst_mb"] <= 5,
            "worst %s MB" % fmt_mb(row["worst_mb"]),
        )
    if "big_line" in results:
        row = results["big_line"][SUBJECT]
        verdict(
            "memory: big line fails with ProtocolError, RSS growth < 2 MB",
            row["outcome"] == "failed: ProtocolError"
            and row["worst_growth_mb"] is not None
            and row["worst_growth_mb"] < 2,
            "%s, growth %s MB" % (row["outcome"], fmt_mb(row["worst_growth_mb"])),
        )
    if "startup" in results:
        extra = results["startup"]["import cost over requests"]["median_ms"]
        verdict("start-up: import < 5 ms more than requests", extra < 5, "+%s" % fmt_ms(extra))
    return verdicts


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt_ms(value):
    if value is None:
        return "-"
    if value >= 1000:
        return "%.2f s" % (value / 1000)
    if value >= 10:
        return "%.0f ms" % value
    return "%.2f ms" % value


def fmt_rate(value):
    return "-" if value is None else f"{value:,.0f}"


def fmt_mb(value):
    return "-" if value is None else "%.1f" % value


def fmt_ratio(value):
    return "-" if value is None else "%.2fx" % value


def render(report):
    out = []
    machine = report["machine"]
    out.append("munsit_progress benchmark (%s mode), %s" % (report["mode"], machine["date"]))
    out.append(machine_header(machine))
    out.append(
        "load average at start: %s" % " ".join("%.2f" % x for x in machine["load_average_at_start"])
    )
    out.append("peers: " + ", ".join("%s %s" % kv for kv in sorted(machine["packages"].items())))
    results = report["results"]

    def section(title, header, rows):
        out.append("")
        out.append(title)
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for line in [header] + rows:
            out.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())

    def problems(row):
        return "; ".join(sorted(set(row.get("problems", [])))) or ""

    if "promptness" in results:
        header = ["client"] + ["%s median / worst" % f for f in FRAMINGS]
        rows = []
        for client in CLIENTS:
            cells = [client]
            for framing in FRAMINGS:
                row = results["promptness"][framing][client]
                if "note" in row:
                    cells.append("n/a")
                else:
                    cells.append("%s / %s" % (fmt_ms(row["median_ms"]), fmt_ms(row["worst_ms"])))
            rows.append(cells)
        section(
            "Promptness: server write -> caller, events 20 ms apart (%s events x %s runs)"
            % (report["settings"]["prompt_events"], report["settings"]["prompt_runs"]),
            header,
            rows,
        )
        header = ["client"] + ["%s median ratio" % f for f in FRAMINGS]
        rows = [
            [c] + [fmt_ratio(results["promptness"][f][c].get("ratio")) for f in FRAMINGS]
            for c in CLIENTS
        ]
        section("Promptness ratios to munsit_progress (median delay)", header, rows)
    if "slow_job" in results:
        rows = [
            [
                c,
                fmt_ms(r["median_ms"]),
                fmt_ms(r["worst_ms"]),
                fmt_ratio(r.get("ratio")),
                problems(r),
            ]
            for c, r in results["slow_job"].items()
        ]
        section(
            "Slow job: an 80-byte event every %g s, close-delimited: how far behind"
            % report["settings"]["slow_interval"],
            ["client", "median", "worst", "ratio", "problems"],
            rows,
        )
    if "recovery" in results:
        rows = [
            [k, fmt_ms(r["median_ms"]), fmt_ms(r["worst_ms"]), r["runs"], problems(r)]
            for k, r in results["recovery"].items()
        ]
        section(
            "Recovery (munsit_progress.wait): connection dropped -> next on_progress",
            ["stream", "median", "worst", "runs", "problems"],
            rows,
        )
    if "throughput" in results:
        rows = [
            [
                c,
                fmt_rate(r["median_per_s"]),
                fmt_rate(r["worst_per_s"]),
                fmt_ratio(r.get("ratio")),
                problems(r),
            ]
            for c, r in results["throughput"].items()
        ]
        section(
            "Throughput: %s ~80-byte events, chunked (events/s, first event to done)"
            % "{:,}".format(report["settings"]["throughput_events"]),
            ["client", "median", "worst", "ratio", "problems"],
            rows,
        )
    if "memory" in results:
        rows = [
            [
                c,
                fmt_mb(r["median_mb"]),
                fmt_mb(r["worst_mb"]),
                fmt_ratio(r.get("ratio")),
                problems(r),
            ]
            for c, r in results["memory"].items()
        ]
        section(
            "Memory: peak RSS growth over imports, %s-event stream (MB)"
            % "{:,}".format(report["settings"]["memory_events"]),
            ["client", "median", "worst", "ratio", "problems"],
            rows,
        )
    if "big_line" in results:
        rows = [
            [
                c,
                r["outcome"],
                fmt_ms(r["median_s"] * 1000 if r["median_s"] else None),
                fmt_mb(r["worst_growth_mb"]),
            ]
            for c, r in results["big_line"].items()
        ]
        section(
            "Big line: %d MB without a newline, close-delimited (limit %g s per client)"
            % (report["settings"]["big_line_mb"], report["settings"]["big_line_limit"]),
            ["client", "outcome", "time", "RSS growth MB"],
            rows,
        )
    if "startup" in results:
        rows = [
            [k, fmt_ms(r["median_ms"]), fmt_ms(r.get("worst_ms"))]
            for k, r in results["startup"].items()
        ]
        section(
            "Start-up (%d runs)" % report["settings"]["startup_runs"],
            ["command", "median", "worst"],
            rows,
        )
    if report.get("targets"):
        rows = [
            ["met" if v["met"] else "MISSED", v["target"], v["measured"]] for v in report["targets"]
        ]
        section("Targets (issue 5)", ["", "target", "measured"], rows)
    out.append("")
    out.append("took %.0f s" % report["seconds"])
    return "\n".join(out)


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


def ensure_venv(log):
    """Create benchmarks/.venv with the peers, or reuse it when it has them."""
    marker = os.path.join(VENV, "benchmark-packages.txt")
    wanted = "\n".join(PEER_PACKAGES)
    if os.path.exists(marker) and os.path.exists(VENV_PYTHON):
        with open(marker) as f:
            if f.read() == wanted:
                return
    log("setting up %s with %s" % (VENV, ", ".join(PEER_PACKAGES)))
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run(
        [VENV_PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + PEER_PACKAGES,
        check=True,
    )
    with open(marker, "w") as f:
        f.write(wanted)


def snapshot_subject(source):
    """Copy the munsit_progress.py to measure; return its SHA-256."""
    os.makedirs(SUBJECT_DIR, exist_ok=True)
    target = os.path.join(SUBJECT_DIR, "munsit_progress.py")
    shutil.copy2(source, target)
    with open(target, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    probe = (
        "import json, platform, sys\n"
        "from importlib.metadata import version\n"
        "names = %r\n"
        "import munsit_progress\n"
        "print(json.dumps({'python': platform.python_version(),"
        " 'implementation': platform.python_implementation(),"
        " 'munsit_progress': munsit_progress.__version__,"
        " 'packages': {n: version(n) for n in names}}))\n"
        % (PEER_PACKAGES + ["urllib3", "h11", "httpcore"])
    )
    found = json.loads(
        subprocess.run(
            [VENV_PYTHON, "-c", probe],
            cwd=SUBJECT_DIR,
            env=child_env(),
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        ).stdout
    )
    git = "unknown"
    if shutil.which("git"):
        head = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ).stdout.strip()
        committed = subprocess.run(
            ["git", "-C", REPO, "show", "HEAD:munsit_progress.py"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ).stdout
        with open(os.path.join(SUBJECT_DIR, "munsit_progress.py"), "rb") as f:
            measured = f.read()
        git = "git HEAD %s, %s" % (
            head,
            "as committed" if measured == committed else "the measured file differs from HEAD",
        )
    memory_kb = None
    try:
        with open("/proc/meminfo") as f:
            memory_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1) if memory_kb else None,
        "os": "%s %s" % (platform.system(), platform.release()),
        # Other work on the machine shows up in the worst cases; say how much.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": "%s %s" % (found["implementation"], found["python"]),
        "munsit_progress": found["munsit_progress"],
        "git": git,
        "munsit_progress_sha256": None,
        "packages": found["packages"],
    }


def machine_header(machine):
    """One line naming the machine, the Python and the version measured
    (the other benchmarks print it too)."""
    return "%s, %d cores, Python %s; munsit_progress %s (%s, sha256 %s)" % (
        machine["cpu"],
        machine["cores"],
        machine["python"],
        machine["munsit_progress"],
        machine["git"],
        (machine["munsit_progress_sha256"] or "?")[:12],
    )


def profile(server, settings, log):
    """cProfile the munsit_progress client on the throughput case."""
    import pstats

    path = os.path.join(HERE, ".venv", "throughput.prof")
    url = server.add(Scenario("bulk", "chunked", settings.throughput_events))
    result = run_client(SUBJECT, url, "count", limit=300, profile=path)
    log(
        "profiled %s events in %.2f s (under the profiler)"
        % (result.get("events"), result.get("elapsed", 0))
    )
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(18)
    # The module's own functions, by the time spent in them and below them.
    stats.sort_stats("cumulative").print_stats("munsit_progress.py|<string>", 12)
    print("profile saved to %s (python -m pstats %s)" % (path, path))


SECTIONS = ["promptness", "slow_job", "recovery", "throughput", "memory", "startup"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run that checks the harness works (under 2 minutes)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default benchmarks/results[-quick].json)",
    )
    parser.add_argument(
        "--only",
        metavar="SECTION",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable): " + ", ".join(SECTIONS),
    )
    parser.add_argument(
        "--profile", action="store_true", help="only profile munsit_progress on the throughput case"
    )
    parser.add_argument(
        "--subject",
        metavar="FILE",
        default=os.path.join(REPO, "munsit_progress.py"),
        help="the munsit_progress.py to measure (default: the checkout's), e.g. an older version "
        "from git show REV:munsit_progress.py",
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    started = time.monotonic()

    def log(text):
        print("[%5.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    ensure_venv(log)
    digest = snapshot_subject(args.subject)
    with LoopbackServer(settings.server_lifetime, settings.server_connections) as server:
        if args.profile:
            profile(server, settings, log)
            return 0
        machine = machine_info()
        machine["munsit_progress_sha256"] = digest
        sections = args.only or SECTIONS
        results = {}
        if "promptness" in sections:
            results["promptness"] = measure_promptness(server, settings, log)
        if "slow_job" in sections:
            results["slow_job"] = measure_slow_job(server, settings, log)
        if "recovery" in sections:
            results["recovery"] = measure_recovery(server, settings, log)
        if "throughput" in sections:
            results["throughput"] = measure_throughput(server, settings, log)
        if "memory" in sections:
            results["memory"], results["big_line"] = measure_memory(server, settings, log)
    if "startup" in sections:
        results["startup"] = measure_startup(settings, log)
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": dict(vars(settings)),
        "results": results,
        "targets": judge(results),
        "harness_problems": harness_problems(results),
        "seconds": time.monotonic() - started,
    }
    path = args.json or os.path.join(HERE, "results-quick.json" if args.quick else "results.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(render(report))
    print("JSON written to %s" % path)
    problems = harness_problems(results)
    for problem in problems:
        print("harness problem: %s" % problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
