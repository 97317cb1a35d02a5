"""Benchmark uploading a file: munsit_progress.submit against the usual ways.

    python benchmarks/upload.py                  # full run: 100 MB, 15 runs per client, ~40 s
    python benchmarks/upload.py --quick          # does the harness work: 10 MB, one run, ~3 s
    python benchmarks/upload.py --size 200       # another file size, in MB (10**6 bytes)
    python benchmarks/upload.py --runs 3         # fewer runs per client, for a quicker look
    python benchmarks/upload.py --json out.json  # also write the results and the machine as JSON
    python benchmarks/upload.py --profile        # cProfile of munsit_progress.submit, one upload
    python benchmarks/upload.py --subject old/munsit_progress.py   # measure another version

A file of random bytes (name ending .wav, in a temporary folder, removed at
the end) is sent as multipart/form-data, one part named ``audio``, to a
loopback server that reads and discards the body and answers like
``POST /denoise``.  The clients, side by side in one run:

- ``munsit_progress``: ``submit(path, check=False)``, which first reads the
  file to know its content (its tag, and the look before paying: a GET the
  server answers with an empty account), then streams it with an exact
  Content-Length;
- ``munsit_progress tag=False``: the same upload without the tag, so without
  that first read and the look: the transfer alone;
- ``requests files=``: ``requests.post(url, files=...)``, the usual way, which
  builds the whole body in memory first;
- ``requests-toolbelt``: requests with ``MultipartEncoder``, a streaming peer
  (installed into benchmarks/.venv if missing; skipped if it cannot be);
- ``curl -F``: the floor (skipped if curl is not on PATH).

Each client runs in its own subprocess, several times (the median is kept;
the clients take turns, so that a busy moment hits them all alike):

- throughput: the file's size over the time of the upload call itself
  (measured around the call inside the Python child; curl's time_total),
  in MB/s of 10**6 bytes;
- peak memory growth: the client process's peak RSS (ru_maxrss from wait4)
  with the file, less the same with a 1 KB file, so that the interpreter,
  the imports and curl's own baseline cancel out.  Linux starts an exec'd
  process's ru_maxrss at its parent's peak, so every client is started
  through GNU time (/usr/bin/time), which forks it from a ~1 MB process and
  reports its ru_maxrss; without it the figures cannot go below this
  process's own peak RSS, which the output says.

On loopback 100 MB takes about 0.1 s, so one run is noisy: on 2 cores the
median of 3 runs moved munsit_progress's ratio to curl between 0.6x and 1.3x
from one full run to the next, so a full run takes 15 (~40 s).

Targets (from the issue), judged for munsit_progress, never asserted: memory
growth < 5 MB, throughput >= 0.8x curl's.  --quick is what CI runs to see
that it works.  The exit status is 1 only when a client failed to upload (a
harness problem), never for a missed target.

Uses benchmarks/.venv and the helpers of benchmarks/run.py; munsit_progress.py
is copied at the start (one run measures one version while the checkout is
being edited) and the JSON records its SHA-256.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402 (benchmarks/run.py: the venv, the snapshot, the machine)

SUBJECT = "munsit_progress"
# The upload alone: no content tag, so no hashing and no look before paying.
UNTAGGED = "munsit_progress tag=False"
CURL = "curl -F"
# In the order of the table; the first is the subject, the last the floor.
CLIENTS = [SUBJECT, UNTAGGED, "requests files=", "requests-toolbelt", CURL]
TOOLBELT = "requests-toolbelt"
API_KEY = "k"
TINY_BYTES = 1000
MB = 10**6  # throughput: MB/s of 10**6 bytes
MIB = 1024 * 1024  # memory: RSS is counted in KiB, shown in MiB
GNU_TIME = "/usr/bin/time"


class Settings:
    """How much a mode measures."""

    def __init__(self, quick, size_mb, runs):
        self.quick = quick
        self.size_bytes = int((size_mb if size_mb is not None else (10 if quick else 100)) * MB)
        self.runs = runs or (1 if quick else 15)
        self.tiny_bytes = TINY_BYTES
        # A client slower than 2 MB/s is broken, not slow; the limit ends it.
        self.client_limit = 60.0 + self.size_bytes / (2.0 * MB)
        # The server stops by itself after this long or this many connections.
        self.server_lifetime = 600.0 if quick else 3600.0
        self.server_connections = 1000


# --------------------------------------------------------------------------
# The loopback server
# --------------------------------------------------------------------------

BUFFER_BYTES = 1024 * 1024
HEAD_LIMIT = 64 * 1024
LINE_LIMIT = 4096
MAX_BODY = 1 << 40
MAX_CHUNKS = 1 << 24


class Discarder:
    """Reads a request from one connection and throws the body away.

    Every receive goes into one reusable 1 MiB buffer and is never asked for
    more than the body has left, so nothing accumulates; only a head and the
    chunk-size lines (a few KB at most) are kept as bytes.  Each receive
    checks the connection's deadline, and the socket has a timeout."""

    def __init__(self, conn, deadline):
        self.conn = conn
        self.deadline = deadline
        self.view = memoryview(bytearray(BUFFER_BYTES))
        self.pending = b""  # bytes received past a head or a line, not yet used

    def _receive(self, limit):
        if time.monotonic() > self.deadline:
            raise TimeoutError("the connection's deadline passed")
        count = self.conn.recv_into(self.view, limit)
        if not count:
            raise ConnectionError("the client closed the connection early")
        return count

    def _until(self, marker, limit):
        """The bytes up to ``marker`` (consumed, not returned)."""
        for _ in range(limit // 256 + 2):  # each pass adds bytes or raises
            end = self.pending.find(marker)
            if end >= 0:
                found, self.pending = self.pending[:end], self.pending[end + len(marker) :]
                return found
            if len(self.pending) > limit:
                raise ValueError("no %r within %d bytes" % (marker, limit))
            count = self._receive(LINE_LIMIT)
            self.pending += self.view[:count].tobytes()
        raise ValueError("no %r within %d bytes" % (marker, limit))

    def head(self):
        return self._until(b"\r\n\r\n", HEAD_LIMIT)

    def line(self):
        return self._until(b"\r\n", LINE_LIMIT)

    def discard(self, count):
        """Receive and drop exactly ``count`` body bytes."""
        taken = min(len(self.pending), count)
        self.pending = self.pending[taken:]
        left = count - taken
        while left > 0:  # bounded: each pass takes at least a byte, or raises
            left -= self._receive(min(left, BUFFER_BYTES))
        return count

    def chunked(self):
        """Drop a chunked body; return its size."""
        total = 0
        for _ in range(MAX_CHUNKS):
            size = int(self.line().split(b";")[0].strip(), 16)
            if size == 0:
                for _ in range(100):  # trailers, up to the empty line
                    if not self.line():
                        return total
                raise ValueError("too many trailers")
            total += self.discard(size)
            if total > MAX_BODY or self.line():
                raise ValueError("a malformed chunked body")
        raise ValueError("too many chunks")


class UploadServer(run.LoopbackServer):
    """run.py's server (127.0.0.1, port 0, a thread per connection, a bounded
    accept loop with a lifetime) answering ``POST .../denoise`` instead.

    Each client run gets its own URL (``/rN/api/v1``); what the server saw
    there (body bytes, framing, the id it answered) is kept for the check."""

    def __init__(self, lifetime, max_connections):
        super().__init__(lifetime, max_connections)
        self.seen = {}

    def new_base_url(self):
        with self.lock:
            key = "r%d" % (len(self.seen) + 1)
            self.seen[key] = None
        return key, "http://127.0.0.1:%d/%s/api/v1" % (self.port, key)

    def _serve(self, conn):
        try:
            conn.settimeout(self.SOCKET_TIMEOUT)
            reader = Discarder(conn, time.monotonic() + self.CONNECTION_DEADLINE)
            lines = reader.head().decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            path = parts[1] if len(parts) == 3 else ""
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            key = path.split("/")[1] if path.count("/") > 1 else ""
            if parts[0] == "GET" and key in self.seen and "/denoise?" in path:
                # The look before paying: an account with no jobs yet.
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]")
                return
            if parts[0] != "POST" or key not in self.seen or not path.endswith("/denoise"):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            # curl asks before sending a body over 1 MB, and would wait a
            # second for this answer.
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            started = time.monotonic()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                framing, size = "chunked", reader.chunked()
            else:
                length = int(headers.get("content-length", "-1"))
                if not 0 <= length <= MAX_BODY:
                    raise ValueError("no usable Content-Length")
                framing, size = "content-length", reader.discard(length)
            denoise_id = str(uuid.uuid4())
            self.seen[key] = {
                "body_bytes": size,
                "framing": framing,
                "denoise_id": denoise_id,
                "api_key": headers.get("x-api-key"),
                "seconds": time.monotonic() - started,
            }
            body = json.dumps({"jobId": denoise_id, "denoiseId": denoise_id}).encode("ascii")
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        except (OSError, ValueError, IndexError):
            pass  # a broken request: its client reports the failure
        finally:
            conn.close()


# --------------------------------------------------------------------------
# The clients, in the child process: ``upload.py --child CLIENT FILE BASE_URL``
# Each ``load_*`` does its imports (outside the timing) and returns the call
# to time, which uploads the file and returns the denoise id it was given.
# --------------------------------------------------------------------------


def load_munsit_progress(path, base_url, **options):
    import munsit_progress

    def call():
        return munsit_progress.submit(
            path, api_key=API_KEY, base_url=base_url, check=False, **options
        ).denoise_id

    return call, munsit_progress.__file__


def load_munsit_progress_untagged(path, base_url):
    return load_munsit_progress(path, base_url, tag=False)


def load_requests_files(path, base_url):
    import requests

    def call():
        with open(path, "rb") as f:
            response = requests.post(
                base_url + "/denoise",
                files={"audio": (os.path.basename(path), f, "audio/wav")},
                headers={"x-api-key": API_KEY},
                timeout=(10, 120),
            )
        response.raise_for_status()
        return response.json()["denoiseId"]

    return call, requests.__file__


def load_requests_toolbelt(path, base_url):
    import requests
    from requests_toolbelt import MultipartEncoder

    def call():
        with open(path, "rb") as f:
            body = MultipartEncoder(fields={"audio": (os.path.basename(path), f, "audio/wav")})
            response = requests.post(
                base_url + "/denoise",
                data=body,
                headers={"x-api-key": API_KEY, "Content-Type": body.content_type},
                timeout=(10, 120),
            )
        response.raise_for_status()
        return response.json()["denoiseId"]

    return call, requests.__file__


LOADERS = {
    SUBJECT: load_munsit_progress,
    UNTAGGED: load_munsit_progress_untagged,
    "requests files=": load_requests_files,
    "requests-toolbelt": load_requests_toolbelt,
}


def child(argv):
    """Upload once; print one JSON line: the seconds of the call, the id."""
    client, path, base_url = argv[:3]
    profile_path = argv[4] if argv[3:4] == ["--profile"] else None
    call, module = LOADERS[client](path, base_url)
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.monotonic()
    denoise_id = call()
    elapsed = time.monotonic() - started
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    print(json.dumps({"elapsed": elapsed, "denoise_id": denoise_id, "module": module}))
    return 0


# --------------------------------------------------------------------------
# Running the clients, in the parent
# --------------------------------------------------------------------------


def client_command(client, path, base_url, profile_path=None):
    if client == CURL:
        url = base_url + "/denoise"
        # -q first: no ~/.curlrc.  The status code rides along with time_total.
        return [
            "curl", "-q", "-s", "-o", "/dev/null", "-F", "audio=@" + path,
            "-H", "x-api-key: " + API_KEY, url, "-w", "%{time_total} %{http_code}",
        ]  # fmt: skip
    command = [run.VENV_PYTHON, os.path.abspath(__file__), "--child", client, path, base_url]
    return command + (["--profile", profile_path] if profile_path else [])


def run_child(command, limit, workdir):
    """Run one client; return (exit code, stdout, stderr, peak RSS in KiB).

    Started through GNU time when there is one (see the module docstring),
    in a session of its own, so that a timeout kills the client too."""
    rss_path = None
    if os.access(GNU_TIME, os.X_OK):
        rss_path = os.path.join(workdir, "rss.txt")
        if os.path.exists(rss_path):
            os.remove(rss_path)  # never the last run's figure
        command = [GNU_TIME, "-f", "%M", "-o", rss_path] + command
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run.child_env(),
        cwd=run.SUBJECT_DIR,
        start_new_session=True,
    )
    out, err = [], []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),
    ]
    for reader in readers:
        reader.start()
    killer = threading.Timer(limit, kill_group, (proc.pid,))
    killer.start()
    # wait4, not proc.wait(): it hands back the child's resource usage.
    _, status, usage = os.wait4(proc.pid, 0)
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(10)
    peak_kb = usage.ru_maxrss
    if rss_path:
        peak_kb = None
        try:
            with open(rss_path) as f:  # GNU time adds a line if the exit status is not 0
                lines = f.read().split()
        except OSError:
            lines = []  # killed at the time limit, GNU time with it
        if lines and lines[-1].isdigit():
            peak_kb = int(lines[-1])
    return proc.returncode, decoded(out), decoded(err), peak_kb


def kill_group(pid):
    """End a client that overran its time limit (and GNU time above it)."""
    try:
        os.killpg(pid, 9)
    except OSError:
        pass  # it ended just now


def decoded(chunks):
    return b"".join(chunks).decode("utf-8", "replace")


def upload_once(server, client, path, size, settings, workdir):
    """One upload by one client: a result dict, with ``error`` on failure."""
    key, base_url = server.new_base_url()
    code, out, err, peak_kb = run_child(
        client_command(client, path, base_url), settings.client_limit, workdir
    )
    result = {"peak_kb": peak_kb}
    seen = server.seen.get(key)
    if client == CURL:
        fields = out.split()
        if code == 0 and len(fields) == 2 and fields[1] == "200":
            result["elapsed"] = float(fields[0])
            result["denoise_id"] = seen and seen["denoise_id"]
    else:
        for line in out.splitlines():
            if line.startswith("{"):
                result.update(json.loads(line))
    problem = None
    if code != 0 or "elapsed" not in result:
        # The last line of a traceback (or of curl's complaint) says what failed.
        said = (err.strip() or out.strip() or "no output").splitlines()[-1]
        problem = "exit status %s: %s" % (code, said[-300:])
    elif seen is None:
        problem = "the server saw no complete request"
    elif seen["body_bytes"] < size:
        problem = "the server got %d body bytes for a %d-byte file" % (seen["body_bytes"], size)
    elif result.get("denoise_id") != seen["denoise_id"]:
        problem = "the client returned %r, not the server's id" % result.get("denoise_id")
    elif seen["api_key"] != API_KEY:
        problem = "the server got no x-api-key header"
    elif client == SUBJECT and os.path.dirname(result["module"]) != run.SUBJECT_DIR:
        problem = "munsit_progress was imported from %s, not the snapshot" % result["module"]
    if problem:
        result["error"] = problem
    if seen:
        result["server"] = {k: seen[k] for k in ("body_bytes", "framing")}
    return result


def measure(server, clients, big_path, tiny_path, settings, log):
    """Every client, settings.runs times with each file, taking turns."""
    runs = {client: {"big": [], "tiny": []} for client in clients}
    for number in range(settings.runs):
        # Rotated each round, so no client is always first after a pause.
        turn = clients[number % len(clients) :] + clients[: number % len(clients)]
        for client in turn:
            for label, path, size in (
                ("big", big_path, settings.size_bytes),
                ("tiny", tiny_path, settings.tiny_bytes),
            ):
                result = upload_once(
                    server, client, path, size, settings, os.path.dirname(big_path)
                )
                runs[client][label].append(result)
                if label == "big":
                    log(
                        "run %d %-18s %s, peak RSS %s MiB"
                        % (
                            number + 1,
                            client,
                            result.get("error")
                            or "%.1f MB/s" % (settings.size_bytes / MB / result["elapsed"]),
                            fmt_mb(result["peak_kb"] / 1024.0 if result["peak_kb"] else None),
                        )
                    )
    return runs


def summarize(runs, settings):
    table = {}
    for client, by_file in runs.items():
        good = [r for r in by_file["big"] if "error" not in r]
        rates = [settings.size_bytes / MB / r["elapsed"] for r in good]
        big_peaks = [r["peak_kb"] for r in good if r["peak_kb"]]
        tiny_peaks = [r["peak_kb"] for r in by_file["tiny"] if "error" not in r and r["peak_kb"]]
        growth = worst_growth = None
        if big_peaks and tiny_peaks:
            growth = (statistics.median(big_peaks) - statistics.median(tiny_peaks)) / 1024.0
            worst_growth = (max(big_peaks) - min(tiny_peaks)) / 1024.0
        table[client] = {
            "median_mb_per_s": statistics.median(rates) if rates else None,
            "worst_mb_per_s": min(rates) if rates else None,
            "peak_growth_mib": growth,
            "worst_peak_growth_mib": worst_growth,
            "peak_kb": big_peaks,
            "tiny_peak_kb": tiny_peaks,
            "seconds": [r["elapsed"] for r in good],
            "server": [r.get("server") for r in by_file["big"]],
            "problems": [
                "%s file: %s" % (label, r["error"])
                for label in ("big", "tiny")
                for r in by_file[label]
                if "error" in r
            ],
        }
    floor = table.get(CURL, {}).get("median_mb_per_s")
    for row in table.values():
        rate = row["median_mb_per_s"]
        row["ratio_to_curl"] = rate / floor if rate and floor else None
    return table


def judge(table):
    """The issue's targets for munsit_progress: judged, never asserted."""
    row = table.get(SUBJECT, {})
    growth = row.get("peak_growth_mib")
    # The transfer itself: by default submit() first reads the file to know
    # its content (the tag and the look before paying), which no peer does.
    ratio = table.get(UNTAGGED, {}).get("ratio_to_curl")
    return [
        {
            "target": "memory: peak RSS growth < 5 MB",
            "met": None if growth is None else growth < 5,  # None: not measured
            "measured": "%s MiB" % fmt_mb(growth),
        },
        {
            "target": "throughput of the transfer (tag=False): >= 0.8x curl's",
            "met": None if ratio is None else ratio >= 0.8,
            "measured": fmt_ratio(ratio) if CURL in table else "n/a (no curl)",
        },
    ]


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt_mb(value):
    # + 0.0: a growth that rounds to -0.0 shows as 0.0
    return "-" if value is None else "%.1f" % (round(value, 1) + 0.0)


def fmt_ratio(value):
    return "-" if value is None else "%.2fx" % value


def render(report):
    machine, settings = report["machine"], report["settings"]
    out = [
        "munsit_progress upload benchmark (%s mode), %s" % (report["mode"], machine["date"]),
        run.machine_header(machine),
        "load average at start: %s"
        % " ".join("%.2f" % x for x in machine["load_average_at_start"]),
        "peers: %s; %s"
        % (
            ", ".join("%s %s" % kv for kv in sorted(machine["packages"].items())),
            machine["curl"] or "no curl",
        ),
        "peak RSS: %s" % machine["rss_method"],
        "",
        "Upload of %s MB (%s bytes) to a loopback server that discards it, %d run(s) per client"
        % (
            "%g" % (settings["size_bytes"] / MB),
            "{:,}".format(settings["size_bytes"]),
            settings["runs"],
        ),
    ]
    header = ["client", "MB/s median", "worst", "ratio to curl", "peak growth MiB", "problems"]
    rows = []
    for client in CLIENTS:
        if client in report["skipped"]:
            rows.append([client, "-", "-", "-", "-", "skipped: " + report["skipped"][client]])
            continue
        row = report["results"][client]
        rows.append(
            [
                client,
                "-" if row["median_mb_per_s"] is None else "%.0f" % row["median_mb_per_s"],
                "-" if row["worst_mb_per_s"] is None else "%.0f" % row["worst_mb_per_s"],
                fmt_ratio(row["ratio_to_curl"]),
                fmt_mb(row["peak_growth_mib"]),
                "; ".join(row["problems"])[:120],
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header] + rows:
        out.append("  " + "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    out.append("")
    if report["mode"] == "quick":
        # Scaled down to see that the harness works; the figures are too
        # small and too noisy to judge a target by.
        out.append(
            "Targets, munsit_progress (quick mode: indicative only; the full run judges them)"
        )
    else:
        out.append("Targets (munsit_progress):")
    for verdict in report["targets"]:
        out.append(
            "  %-6s %-34s %s"
            % (
                {True: "met", False: "MISSED", None: "n/a"}[verdict["met"]],
                verdict["target"],
                verdict["measured"],
            )
        )
    out.append("")
    out.append("took %.0f s" % report["seconds"])
    return "\n".join(out)


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


def ensure_toolbelt(log):
    """requests-toolbelt's version in benchmarks/.venv, installing it if need
    be; (None, why) if it cannot be had."""
    probe = [
        run.VENV_PYTHON, "-c",
        "import requests_toolbelt; from importlib.metadata import version; "
        "print(version('requests-toolbelt'))",
    ]  # fmt: skip
    found = subprocess.run(probe, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if found.returncode != 0:
        log("installing requests-toolbelt into %s" % run.VENV)
        installed = subprocess.run(
            [run.VENV_PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "requests-toolbelt"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if installed.returncode != 0:
            return None, "pip could not install it: %s" % installed.stderr.strip()[-200:]
        found = subprocess.run(probe, capture_output=True, text=True)
        if found.returncode != 0:
            return None, "installed but does not import: %s" % found.stderr.strip()[-200:]
    return found.stdout.strip(), None


def curl_version():
    if not shutil.which("curl"):
        return None
    first = subprocess.run(["curl", "--version"], stdout=subprocess.PIPE, text=True).stdout
    return " ".join(first.split()[:2])


def write_random_file(path, size):
    """``size`` random bytes, written 1 MiB at a time (this process's own
    peak RSS stays small: see the module docstring)."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            piece = os.urandom(min(left, MIB))
            f.write(piece)
            left -= len(piece)


def profile(server, big_path, settings, log):
    """cProfile munsit_progress.submit on one upload of the file."""
    import pstats

    path = os.path.join(run.VENV, "upload.prof")
    key, base_url = server.new_base_url()
    code, out, err, _ = run_child(
        client_command(SUBJECT, big_path, base_url, profile_path=path),
        settings.client_limit * 3,
        os.path.dirname(big_path),
    )
    if code != 0:
        print("the profiled upload failed: %s" % err.strip()[-500:], file=sys.stderr)
        return 1
    log("profiled upload: %.2f s (under the profiler)" % json.loads(out)["elapsed"])
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(15)
    print("profile saved to %s (python -m pstats %s)" % (path, path))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 MB, one run: does it work")
    parser.add_argument(
        "--size", type=float, metavar="MB", help="file size in MB of 10**6 bytes (default 100)"
    )
    parser.add_argument(
        "--runs", type=int, metavar="N", help="runs per client (default 3; 1 with --quick)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here as JSON")
    parser.add_argument(
        "--profile", action="store_true", help="only profile munsit_progress on one upload"
    )
    parser.add_argument(
        "--subject",
        metavar="FILE",
        default=os.path.join(run.REPO, "munsit_progress.py"),
        help="the munsit_progress.py to measure (default: the checkout's)",
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick, args.size, args.runs)
    started = time.monotonic()

    def log(text):
        print("[%5.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    run.ensure_venv(log)
    digest = run.snapshot_subject(args.subject)
    skipped = {}
    toolbelt, why = ensure_toolbelt(log)
    if toolbelt is None:
        skipped[TOOLBELT] = why
    curl = curl_version()
    if curl is None:
        skipped[CURL] = "curl is not on PATH"
    for client, reason in skipped.items():
        log("skipping %s: %s" % (client, reason))
    clients = [c for c in CLIENTS if c not in skipped]

    workdir = tempfile.mkdtemp(prefix="munsit-upload-")
    try:
        big_path = os.path.join(workdir, "sample.wav")
        tiny_path = os.path.join(workdir, "tiny.wav")
        write_random_file(big_path, settings.size_bytes)
        write_random_file(tiny_path, settings.tiny_bytes)
        with UploadServer(settings.server_lifetime, settings.server_connections) as server:
            if args.profile:
                return profile(server, big_path, settings, log)
            machine = run.machine_info()
            machine["munsit_progress_sha256"] = digest
            if toolbelt:
                machine["packages"][TOOLBELT] = toolbelt
            machine["curl"] = curl
            machine["rss_method"] = (
                "ru_maxrss via GNU time (%s)" % GNU_TIME
                if os.access(GNU_TIME, os.X_OK)
                else "ru_maxrss of direct children: no figure below this harness's own peak "
                "(%d MiB) can show (install GNU time)" % (run.read_peak_kb(os.getpid()) // 1024)
            )
            log("uploading %d bytes with %s" % (settings.size_bytes, ", ".join(clients)))
            runs = measure(server, clients, big_path, tiny_path, settings, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = summarize(runs, settings)
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": dict(vars(settings)),
        "results": table,
        "skipped": skipped,
        "targets": judge(table),
        "harness_problems": [
            "%s: %s" % (client, problem)
            for client, row in table.items()
            for problem in row["problems"]
        ],
        "seconds": time.monotonic() - started,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(render(report))
    if args.json:
        print("JSON written to %s" % args.json)
    for problem in report["harness_problems"]:
        print("harness problem: %s" % problem, file=sys.stderr)
    return 1 if report["harness_problems"] else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
