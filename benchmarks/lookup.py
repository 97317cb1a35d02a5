"""Benchmark the look before paying: what reading the job history costs.

    python benchmarks/lookup.py                  # full run: 1,000, 20,000, 100,000 jobs, ~3 min
    python benchmarks/lookup.py --quick          # does the harness work: 1,000 and 20,000, ~30 s
    python benchmarks/lookup.py --json out.json  # where the JSON goes
    python benchmarks/lookup.py --sizes 20000    # other account sizes (comma-separated)
    python benchmarks/lookup.py --subject old/munsit_progress.py   # measure another version

Before an upload, submit(), denoise() and denoise_many() list the account's
recent jobs (GET /denoise?offset=N&limit=M, newest first) back to a horizon
and adopt a job that carries the file's content tag and size instead of
paying for it again.  This measures what that look costs on a fake account
of N jobs: the records the server returned (summed over the pages), the
GET /denoise requests, the uploads and the wall time of the call, for

  (a) one new file: submit() of a file whose tag is not in the account
      (the look, then one upload);
  (b) one file found: submit() of a file whose tagged job (success) is in
      the account, FOUND_AGE_DAYS old: no upload;
  (c) a batch of new files: denoise_many(paths, outdir, concurrency=8) of
      100 files (and of 40, for the target), every job done at once; and the
      100 again with reuse=False, which does not look: its time is the floor
      (a version without that parameter says so and skips it);

and, for contrast, reading the whole account: list_jobs() without a limit.
The JSON keeps every request's offset, limit and record count.
The cases (a)-(c) run again on the 20,000-job account with "short pages"
(the server caps every page at 50 records whatever limit asks), to show
that the look reads on past a page shorter than it asked for.

The fake account is a stdlib ThreadingHTTPServer on 127.0.0.1 (port 0) in
this process, holding N synthetic records like the API's, spread evenly
over the last 90 days, newest first; it answers POST /denoise (the whole
multipart body read; a pending record added at the front), GET
/denoise/{id}/progress (done at once) and GET /files/{id}.wav (a few
bytes), and counts what it serves.  The account is put back as it was
before every run.  The client runs in a subprocess of its own (the venv's
Python), so that the server does not share its interpreter; its wall time
and CPU time are measured inside it, around the call (imports excluded).
The cases of one account take turns (run 1 of each, then run 2 of each),
so that other work on the machine weighs on them alike; the look's share
of a batch's time is its median less that of reuse=False.

Targets (from the issue), judged, never asserted: one new file on an
account of 20,000 jobs reads at most 5,000 records; a batch of 40 new files
at most twice that, 10,000.  The records are counted, not timed, so a
--quick run judges them as a full run does.  The exit status is 1 only when
a run failed (the call raised, or uploaded or saved other than expected for
the case), never for a missed target.

Uses benchmarks/.venv and the helpers of benchmarks/run.py; munsit_progress.py
is copied at the start (one run measures one version while the checkout is
being edited) and the JSON records its SHA-256.
"""

import argparse
import datetime
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from urllib.parse import parse_qs, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402 (benchmarks/run.py: the venv, the snapshot, the machine)

API_KEY = "k"
API_PATH = "/api/v1"
DAY = 86400.0
HISTORY_DAYS = 90
FOUND_AGE_DAYS = 1.0  # how old the job of case (b) is
SHORT_PAGE = 50  # the "short pages" server's cap on a page
SHORT_PAGES_SIZE = 20000
CONCURRENCY = 8
BATCH_FILES = 100
TARGET_BATCH_FILES = 40
TARGET_ONE = 5000  # records read by one new file on 20,000 jobs, at most
TARGET_BATCH = 2 * TARGET_ONE  # by a batch of 40 new files on 20,000 jobs
TARGET_SIZE = 20000
TAG_DIGITS = 20
RESULT_BYTES = b"RIFF-denoised"

# The client, in a subprocess: one call, timed around the call itself.
CLIENT_SCRIPT = """\
import inspect, json, sys, time
import munsit_progress
spec = json.loads(sys.argv[1])
call = {"submit": munsit_progress.submit, "batch": munsit_progress.denoise_many,
        "list": munsit_progress.list_jobs}[spec["call"]]
common = dict(spec["options"], api_key=spec["api_key"], base_url=spec["base_url"])
out = {"module": munsit_progress.__file__}
unknown = set(spec["options"]) - set(inspect.signature(call).parameters)
if unknown:  # an older version
    out["unsupported"] = sorted(unknown)
    print(json.dumps(out))
    sys.exit()
started, cpu = time.perf_counter(), time.process_time()
try:
    if spec["call"] == "submit":
        out["denoise_ids"] = [call(spec["paths"][0], **common).denoise_id]
    elif spec["call"] == "batch":
        results = list(call(spec["paths"], spec["outdir"], concurrency=spec["concurrency"],
                            **common))
        out["denoise_ids"] = [r.denoise_id for r in results]
        out["errors"] = ["%s: %r" % (r.path, r.error) for r in results if r.error is not None]
        out["outputs"] = [r.output for r in results if r.output]
    else:
        out["records"] = len(call(**common))
except Exception as exc:
    out["exception"] = "%s: %s" % (type(exc).__name__, exc)
out["seconds"] = time.perf_counter() - started
out["cpu_s"] = time.process_time() - cpu
print(json.dumps(out))
"""


class Settings:
    """How much a mode measures."""

    def __init__(self, quick, sizes):
        self.quick = quick
        self.sizes = sizes or ([1000, 20000] if quick else [1000, 20000, 100000])
        self.one_file_runs = 2 if quick else 5
        self.batch_runs = 1 if quick else 3
        self.whole_runs = 1 if quick else 2
        self.batch_files = BATCH_FILES
        self.target_batch_files = TARGET_BATCH_FILES
        self.concurrency = CONCURRENCY
        self.found_age_days = FOUND_AGE_DAYS
        self.history_days = HISTORY_DAYS
        self.short_page = SHORT_PAGE
        self.short_pages_size = SHORT_PAGES_SIZE if SHORT_PAGES_SIZE in self.sizes else None
        # A run longer than this is stuck, not slow: it is killed.
        self.client_limit = 120.0
        # The server stops by itself after this long.
        self.server_lifetime = 600.0 if quick else 1800.0


# --------------------------------------------------------------------------
# The fake account
# --------------------------------------------------------------------------


def iso(seconds):
    """An ISO 8601 UTC time with milliseconds and a Z, as the API writes it."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


def content_tag(data):
    """The first 20 hex digits of the SHA-256 of a file's bytes."""
    return hashlib.sha256(data).hexdigest()[:TAG_DIGITS]


def synthetic_record(rng, number, created):
    """One record like the API's: mostly tagged WAV uploads that succeeded,
    some plain names, a few videos, a few failures."""
    job = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    kind = rng.random()
    if kind < 0.7:
        name = "munsit-%020x.rec-%06d.wav" % (rng.getrandbits(80), number)
        extension, source = "wav", "audio"
    elif kind < 0.9:
        name = "interview %d.mp3" % number
        extension, source = "mp3", "audio"
    else:
        name = "clip_%06d.mp4" % number
        extension, source = "mp4", "video"
    failed = rng.random() < 0.03
    updated = created + rng.uniform(5.0, 120.0)
    return {
        "id": job,
        "user_id": "user-bench",
        "transaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "audio_url": None if failed else "https://cdn.bench.invalid/denoised/%s.wav" % job,
        "original_audio_url": "https://cdn.bench.invalid/original/%s.%s" % (job, extension),
        "file_name": name,
        "audio_duration": round(rng.uniform(5.0, 900.0), 2),
        "audio_size": rng.randint(50000, 50000000),
        "audio_format": extension,
        "source_type": source,
        "status": "failed" if failed else "success",
        "error": "Denoising failed" if failed else None,
        "created_at": iso(created),
        "updated_at": iso(updated),
    }


def encode(record):
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


class Account:
    """N records over the last ``days`` days, newest first, each kept as
    its JSON bytes so that serving a page costs a join.

    Jobs the client creates go in ``added`` (newest first) in front of the
    history; ``plant`` puts a file's tagged job in place of the record of
    that age; ``reset`` undoes both.  ``page_cap`` makes the server answer
    at most that many records a page, whatever ``limit`` asks."""

    def __init__(self, size, days, now, seed=1):
        rng = random.Random(seed)
        self.size = size
        self.now = now
        self.span = days * DAY
        # Evenly spread: record i (0 the newest) is (i + 0.5) steps old.
        self.step = self.span / size
        self.records = [
            encode(synthetic_record(rng, size - i, now - (i + 0.5) * self.step))
            for i in range(size)
        ]
        self.added = []  # dicts, newest first
        self.planted = None  # (index, the record it replaced)
        self.page_cap = None
        self.lock = threading.Lock()

    def reset(self):
        with self.lock:
            self.added = []
            if self.planted is not None:
                index, original = self.planted
                self.records[index] = original
                self.planted = None

    def plant(self, data, name, age_days, origin):
        """Make the record ``age_days`` old a successful job of this file;
        return its id."""
        index = min(self.size - 1, int(age_days * DAY / self.step))
        with self.lock:
            original = self.records[index]
            record = json.loads(original.decode("utf-8"))
            record.update(
                file_name=name,
                audio_size=len(data),
                audio_format="wav",
                source_type="audio",
                status="success",
                error=None,
                audio_url="%s/files/%s.wav" % (origin, record["id"]),
            )
            self.records[index] = encode(record)
            self.planted = (index, original)
        return record["id"]

    def page(self, offset, limit):
        """The JSON body and the record count of GET /denoise."""
        if self.page_cap is not None:
            limit = self.page_cap if limit is None else min(limit, self.page_cap)
        with self.lock:
            front = [encode(record) for record in self.added]
            end = None if limit is None else offset + limit
            chosen = front[offset:end]
            if end is None or end > len(front):
                start = max(0, offset - len(front))
                stop = None if end is None else end - len(front)
                chosen += self.records[start:stop]
        return b"[" + b",".join(chosen) + b"]", len(chosen)

    def add(self, name, size):
        """A pending job for an upload just taken; its id."""
        job = str(uuid.uuid4())
        extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        stamp = iso(time.time())
        with self.lock:
            self.added.insert(
                0,
                {
                    "id": job,
                    "user_id": "user-bench",
                    "transaction_id": str(uuid.uuid4()),
                    "audio_url": None,
                    "original_audio_url": "https://cdn.bench.invalid/original/%s" % job,
                    "file_name": name,
                    "audio_duration": 0.125,
                    "audio_size": size,
                    "audio_format": extension,
                    "source_type": "video" if extension in ("mp4", "mov") else "audio",
                    "status": "pending",
                    "error": None,
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        return job

    def finish(self, job, url):
        """The job's record once its done event has been sent."""
        with self.lock:
            for record in self.added:
                if record["id"] == job:
                    record.update(status="success", audio_url=url, updated_at=iso(time.time()))


class Counts:
    """What the server served since the last ``take``."""

    FIELDS = ("list_requests", "records", "list_bytes", "uploads", "progress", "files", "other")

    def __init__(self):
        self.lock = threading.Lock()
        self.values = dict.fromkeys(self.FIELDS, 0)
        self.pages = []  # (offset, limit asked, records answered) of each GET /denoise

    def add(self, **amounts):
        with self.lock:
            for name, amount in amounts.items():
                self.values[name] += amount

    def page(self, offset, limit, answered):
        with self.lock:
            self.pages.append((offset, limit, answered))

    def take(self):
        with self.lock:
            taken = dict(self.values, pages=self.pages)
            self.values = dict.fromkeys(self.FIELDS, 0)
            self.pages = []
        return taken


FILENAME = re.compile(rb'filename="((?:[^"\\]|\\.)*)"')


class Handler(http.server.BaseHTTPRequestHandler):
    """The four endpoints the client calls, on the server's ``account``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the API's servers do

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server, counts = self.server, self.server.counts
        parts = urlsplit(self.path)
        path = parts.path
        if path == API_PATH + "/denoise":
            query = parse_qs(parts.query)
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query["limit"][0]) if "limit" in query else None
            body, count = server.account.page(offset, limit)
            counts.add(list_requests=1, records=count, list_bytes=len(body))
            counts.page(offset, limit, count)
            self.answer(200, body)
        elif path.startswith(API_PATH + "/denoise/") and path.endswith("/progress"):
            job = path[len(API_PATH + "/denoise/") : -len("/progress")]
            url = "%s/files/%s.wav" % (server.origin, job)
            server.account.finish(job, url)
            counts.add(progress=1)
            event = json.dumps({"stage": "done", "url": url, "denoiseId": job})
            body = ("data: %s\n\n" % event).encode("utf-8")
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        elif path.startswith("/files/"):
            counts.add(files=1)
            self.answer(200, RESULT_BYTES, "audio/wav")
        else:
            counts.add(other=1)
            self.answer(404, b'{"errorCode":"404","errorMessage":"not found"}')

    def do_POST(self):
        counts = self.server.counts
        # The whole body is read before answering: urllib3 1.x cannot read
        # an answer sent before its upload went out.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != API_PATH + "/denoise":
            counts.add(other=1)
            self.answer(404, b'{"errorCode":"404","errorMessage":"not found"}')
            return
        boundary = self.headers.get("Content-Type", "").partition("boundary=")[2].strip('"')
        head, _, rest = body.partition(b"\r\n\r\n")
        found = FILENAME.search(head)
        tail = ("\r\n--%s--" % boundary).encode("ascii")
        content = rest[: rest.rfind(tail)] if boundary and tail in rest else rest
        if found is None:
            counts.add(other=1)
            self.answer(400, b'{"errorCode":"40001","errorMessage":"No audio file"}')
            return
        name = re.sub(rb"\\(.)", rb"\1", found.group(1)).decode("utf-8", "replace")
        job = self.server.account.add(name, len(content))
        counts.add(uploads=1)
        self.answer(200, json.dumps({"jobId": job, "denoiseId": job}).encode("ascii"))


class FakeAccountServer(http.server.ThreadingHTTPServer):
    """The fake API on 127.0.0.1, in threads of this process; it shuts
    itself down after ``lifetime`` seconds."""

    daemon_threads = True

    def __init__(self, lifetime):
        super().__init__(("127.0.0.1", 0), Handler)
        self.origin = "http://127.0.0.1:%d" % self.server_address[1]
        self.base_url = self.origin + API_PATH
        self.account = None
        self.counts = Counts()
        self.lifetime = lifetime

    def __enter__(self):
        self.thread = threading.Thread(target=self.serve_forever, name="fake-account", daemon=True)
        self.thread.start()
        self.guard = threading.Timer(self.lifetime, self.shutdown)
        self.guard.daemon = True
        self.guard.start()
        return self

    def __exit__(self, *exc_info):
        self.guard.cancel()
        self.shutdown()
        self.thread.join(5)
        self.server_close()


# --------------------------------------------------------------------------
# Inputs and running the client
# --------------------------------------------------------------------------


def write_input(folder, name, rng):
    """A 4 KB WAV file (16 kHz mono, 0.125 s) of random samples; its bytes."""
    path = os.path.join(folder, name)
    frames = [rng.randint(-8000, 8000) for _ in range(2000)]
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(struct.pack("<%dh" % len(frames), *frames))
    with open(path, "rb") as f:
        return path, f.read()


class Inputs:
    """Files made on demand in one folder, every one of distinct content."""

    def __init__(self, folder):
        self.folder = folder
        self.made = 0
        self.rng = random.Random(7)

    def new(self, count, prefix):
        made = []
        for _ in range(count):
            self.made += 1
            made.append(write_input(self.folder, "%s-%04d.wav" % (prefix, self.made), self.rng))
        return made

    def outdir(self):
        self.made += 1
        path = os.path.join(self.folder, "out-%04d" % self.made)
        os.mkdir(path)
        return path


def run_client(spec, settings, workdir):
    """One call in a subprocess; what it printed, or why it printed nothing."""
    try:
        done = subprocess.run(
            [run.VENV_PYTHON, "-c", CLIENT_SCRIPT, json.dumps(spec)],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=run.child_env(),
            # Not the checkout: "python -c" puts the working folder first on
            # sys.path, and the snapshot must be what is imported.
            cwd=workdir,
            timeout=settings.client_limit,
        )
    except subprocess.TimeoutExpired:
        return {"exception": "killed after %g s" % settings.client_limit, "seconds": None}
    try:
        return json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return {"exception": "exit %d: %s" % (done.returncode, " | ".join(tail)), "seconds": None}


class Case:
    """One kind of call measured: which, on how many new files or on one
    whose job is in the account, with what options, how many times."""

    def __init__(self, key, label, call, files, runs, found=False, options=None, paged=True):
        self.key = key
        self.label = label
        self.call = call  # "submit", "batch" or "list"
        self.files = files
        self.runs = runs
        self.found = found
        self.options = options or {}
        #: Whether it runs again on the short-pages server.
        self.paged = paged


def cases_for(settings):
    batch, target = settings.batch_files, settings.target_batch_files
    return [
        Case("one_new", "(a) one new file: submit()", "submit", 1, settings.one_file_runs),
        Case(
            "one_found",
            "(b) one file found: submit()",
            "submit",
            1,
            settings.one_file_runs,
            found=True,
        ),
        Case(
            "batch", "(c) %d new files: denoise_many()" % batch, "batch", batch, settings.batch_runs
        ),
        # What the batch costs without the look: its time is the floor.
        Case(
            "batch_no_look",
            "(c) %d new files, reuse=False (no look)" % batch,
            "batch",
            batch,
            settings.batch_runs,
            options={"reuse": False},
            paged=False,
        ),
        Case(
            "target_batch",
            "(c) %d new files: denoise_many()" % target,
            "batch",
            target,
            settings.batch_runs,
        ),
        Case("whole", "whole account: list_jobs()", "list", 0, settings.whole_runs, paged=False),
    ]


def measure_once(server, case, made, settings, inputs):
    """Reset the account, run one call, and put together what the client
    did and what the server counted."""
    server.account.reset()
    server.counts.take()
    planted = None
    if case.found:
        path, data = made[0]
        # The form submit() sends: the tag, a dot, the file's name.
        name = "munsit-%s.%s" % (content_tag(data), os.path.basename(path))
        planted = server.account.plant(data, name, settings.found_age_days, server.origin)
    paths = [path for path, _ in made]
    spec = {
        "call": case.call,
        "options": case.options,
        "api_key": API_KEY,
        "base_url": server.base_url,
        "paths": paths,
    }
    if case.call == "batch":
        spec.update(outdir=inputs.outdir(), concurrency=settings.concurrency)
    answer = run_client(spec, settings, inputs.folder)
    counts = server.counts.take()
    server.account.reset()
    if answer.get("unsupported"):
        return {"unsupported": answer["unsupported"]}
    problems = []
    module = answer.get("module")
    if module is not None and os.path.dirname(os.path.abspath(module)) != run.SUBJECT_DIR:
        problems.append("imported %s, not the snapshot" % module)
    if answer.get("exception"):
        problems.append(answer["exception"])
    problems += answer.get("errors", [])
    if case.call == "batch" and not answer.get("exception"):
        outputs = answer.get("outputs", [])
        if len(outputs) != len(paths):
            problems.append("%d outputs of %d" % (len(outputs), len(paths)))
        for output in outputs:
            with open(output, "rb") as f:
                if f.read() != RESULT_BYTES:
                    problems.append("%s is not the result" % output)
                    break
    # What the case should do; a version that does not look yet uploads in (b).
    notes = []
    expected = 0 if case.found else case.files
    if counts["uploads"] != expected:
        notes.append("%d uploads, expected %d" % (counts["uploads"], expected))
    if planted is not None and answer.get("denoise_ids") not in (None, [planted]):
        notes.append("did not adopt the job in the account")
    pages = counts.pop("pages")
    return dict(
        counts,
        seconds=answer.get("seconds"),
        cpu_s=answer.get("cpu_s"),
        problems=problems,
        notes=notes,
        pages_asked=sorted({limit for _, limit, _ in pages}, key=lambda x: (x is None, x)),
        # [offset, limit asked, records answered] of each GET /denoise, in order.
        pages=[list(page) for page in pages],
    )


def measure_cases(server, cases, settings, inputs, log):
    """The runs of several cases, taking turns (run 1 of each, then run 2
    of each...), so that other work on the machine weighs on them alike;
    their counts and median times by case key."""
    runs = {case.key: [] for case in cases}
    skipped = {}
    where = "%7s jobs%s" % (
        f"{server.account.size:,}",
        " (short pages)" if server.account.page_cap else "",
    )
    for number in range(max(case.runs for case in cases)):
        for case in cases:
            if number >= case.runs or case.key in skipped:
                continue
            made = inputs.new(case.files, "found" if case.found else "new")
            one = measure_once(server, case, made, settings, inputs)
            if "unsupported" in one:
                log("%-40s %s: not in this version (%s)" % (case.label, where, one["unsupported"]))
                skipped[case.key] = {"label": case.label, "unsupported": one["unsupported"]}
                continue
            runs[case.key].append(one)
            log(
                "%-40s %s run %d: %s records, %s GET /denoise, %s uploads, %s s%s"
                % (
                    case.label,
                    where,
                    number + 1,
                    one["records"],
                    one["list_requests"],
                    one["uploads"],
                    fmt(one["seconds"], "%.3f"),
                    "".join("; " + text for text in one["problems"] + one["notes"]),
                )
            )
    return {case.key: skipped.get(case.key) or summarize(case, runs[case.key]) for case in cases}


def summarize(case, results):
    seconds = [r["seconds"] for r in results if r["seconds"] is not None]
    summary = {"label": case.label, "files": case.files, "options": case.options}
    for name in Counts.FIELDS:
        values = [r[name] for r in results]
        summary[name] = {"min": min(values), "max": max(values)}
    summary["median_s"] = statistics.median(seconds) if seconds else None
    cpu = [r["cpu_s"] for r in results if r["cpu_s"] is not None]
    summary["median_cpu_s"] = statistics.median(cpu) if cpu else None
    asked = {limit for one in results for limit in one["pages_asked"]}
    summary["limits"] = sorted(asked, key=lambda x: (x is None, x))
    summary["runs"] = results
    return summary


# --------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------


def measure_size(server, size, settings, inputs, log):
    """The cases on an account of ``size`` jobs (and, at SHORT_PAGES_SIZE,
    those that page again with short pages)."""
    started = time.monotonic()
    server.account = Account(size, settings.history_days, time.time())
    log(f"an account of {size:,} jobs made in {time.monotonic() - started:.1f} s")
    measured = {"normal": measure_cases(server, cases_for(settings), settings, inputs, log)}
    if size == settings.short_pages_size:
        server.account.page_cap = settings.short_page
        paged = [case for case in cases_for(settings) if case.paged]
        measured["short_pages"] = measure_cases(server, paged, settings, inputs, log)
        server.account.page_cap = None
    return measured


def measure(settings, workdir, log):
    inputs = Inputs(workdir)
    results = {}
    with FakeAccountServer(settings.server_lifetime) as server:
        for size in settings.sizes:
            results[str(size)] = measure_size(server, size, settings, inputs, log)
            server.account = None  # 100,000 records are ~50 MB of JSON
    return results


def judge(results, settings):
    """The issue's targets: judged, never asserted.  A version that does
    not look reads nothing and is not judged."""
    verdicts = []
    at = results.get(str(TARGET_SIZE), {}).get("normal")
    for key, files, bound in (
        ("one_new", 1, TARGET_ONE),
        ("target_batch", settings.target_batch_files, TARGET_BATCH),
    ):
        case = at[key] if at else None
        records = case["records"]["max"] if case else None
        looked = case is not None and case["list_requests"]["max"] > 0
        measured = "-" if records is None else f"{records:,} records"
        if looked and key == "target_batch" and at["one_new"]["records"]["max"]:
            measured += " (%.1f x one file's)" % (records / at["one_new"]["records"]["max"])
        verdicts.append(
            {
                "target": "%s new file%s, %s jobs: records read <= %s"
                % (files, "s" if files > 1 else "", f"{TARGET_SIZE:,}", f"{bound:,}"),
                "met": records <= bound if looked else None,
                "measured": measured if looked or case is None else "no lookup made",
            }
        )
    return verdicts


def look_in_batch(results):
    """What the look adds to a batch: its medians less reuse=False's."""
    found = {}
    for size, by_pages in results.items():
        looked, floor = by_pages["normal"]["batch"], by_pages["normal"]["batch_no_look"]
        if "unsupported" in floor or None in (looked["median_s"], floor["median_s"]):
            continue
        found[size] = {
            "wall_s": looked["median_s"] - floor["median_s"],
            "cpu_s": looked["median_cpu_s"] - floor["median_cpu_s"],
        }
    return found


def run_findings(results, key):
    """Each run's ``problems`` or ``notes``, the same text of a case's runs
    said once with how many runs it was."""
    for size, by_pages in results.items():
        for pages, cases in by_pages.items():
            for case, summary in cases.items():
                texts = [text for one in summary.get("runs", []) for text in one[key]]
                for text in sorted(set(texts), key=texts.index):
                    yield "%s jobs%s, %s: %s (%d of %d runs)" % (
                        f"{int(size):,}",
                        ", short pages" if pages == "short_pages" else "",
                        case,
                        text,
                        texts.count(text),
                        len(summary["runs"]),
                    )


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def span(counted, pattern="{:,}"):
    """A count, or its range when the runs differed."""
    low, high = (pattern.format(counted[end]) for end in ("min", "max"))
    return low if low == high else "%s-%s" % (low, high)


def render(report):
    machine, s, r = report["machine"], report["settings"], report["results"]
    out = [
        "munsit_progress lookup benchmark (%s mode), %s" % (report["mode"], machine["date"]),
        run.machine_header(machine),
        "load average at start: %s; at end: %s"
        % (
            " ".join("%.2f" % x for x in machine["load_average_at_start"]),
            " ".join("%.2f" % x for x in report["load_average_at_end"]),
        ),
        "fake account: N synthetic records spread evenly over the last %d days, newest first "
        "(ThreadingHTTPServer on 127.0.0.1);" % s["history_days"],
        "  in the last 7 days: %s"
        % "; ".join(
            "%s of %s" % (f"{round(int(n) * 7 / s['history_days']):,}", f"{int(n):,}") for n in r
        ),
        "  (b)'s job is %g day%s old; batches at concurrency=%d, every job done at once; "
        "short pages: at most %d records a page"
        % (
            s["found_age_days"],
            "" if s["found_age_days"] == 1 else "s",
            s["concurrency"],
            s["short_page"],
        ),
        "records read: what the server returned, summed over the GET /denoise requests; "
        "limit: the page sizes asked for;",
        "  time: the call in the client's process (imports excluded), median of (N) runs",
        "",
    ]
    header = [
        "case",
        "jobs",
        "records read",
        "GET /denoise",
        "limit",
        "uploads",
        "list MB",
        "time (N)",
        "client CPU",
    ]
    rows = []
    keys = [case.key for case in cases_for(Settings(report["mode"] == "quick", None))]
    # By case, then size; a case's short-pages row after its others.
    for key in keys:
        for pages, suffix in (("normal", ""), ("short_pages", ", short pages")):
            for size, by_pages in r.items():
                case = by_pages.get(pages, {}).get(key)
                if case is None:
                    continue
                row = [case["label"] + suffix, f"{int(size):,}"]
                if "unsupported" in case:
                    rows.append(row + ["not in this version"] + [""] * 6)
                    continue
                limits = ",".join("all" if n is None else str(n) for n in case["limits"])
                rows.append(
                    row
                    + [
                        span(case["records"]),
                        span(case["list_requests"]),
                        limits or "-",
                        span(case["uploads"]),
                        span({k: v / 1e6 for k, v in case["list_bytes"].items()}, "{:.2f}"),
                        "%s (%d)" % (fmt(case["median_s"], "%.3f s"), len(case["runs"])),
                        fmt(case["median_cpu_s"], "%.3f s"),
                    ]
                )
    widths = [max(len(str(x[i])) for x in [header] + rows) for i in range(len(header))]
    for n, line in enumerate([header] + rows):
        cells = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        ]
        out.append("  " + "  ".join(cells).rstrip())
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    out.append("")
    for size, cost in report["look_in_batch"].items():
        out.append(
            "the look in a batch of %d, %s jobs: %+.2f s wall (%+.1f ms a file), %+.2f s client "
            "CPU (medians, with the look less reuse=False)"
            % (
                s["batch_files"],
                f"{int(size):,}",
                cost["wall_s"],
                1000 * cost["wall_s"] / s["batch_files"],
                cost["cpu_s"],
            )
        )
    out.append("")
    out.append("Targets (records are counted, not timed: a --quick run judges them too):")
    for verdict in report["targets"]:
        out.append(
            "  %-6s %-48s %s"
            % (
                {True: "met", False: "MISSED", None: "n/a"}[verdict["met"]],
                verdict["target"],
                verdict["measured"],
            )
        )
    if report["notes"]:
        out.append("")
        out.append("Not as the case expects (a version without the look uploads in (b)):")
        out += ["  " + note for note in report["notes"]]
    out.append("")
    out.append("took %.0f s" % report["seconds"])
    return "\n".join(out)


def parse_sizes(text):
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes are whole numbers, e.g. 1000,20000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes are whole numbers >= 1")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1,000 and 20,000 jobs, fewer runs: does it work"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default benchmarks/lookup-results[-quick].json)",
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, metavar="N,N", help="the account sizes, in jobs"
    )
    parser.add_argument(
        "--subject",
        metavar="FILE",
        default=os.path.join(run.REPO, "munsit_progress.py"),
        help="the munsit_progress.py to measure (default: the checkout's)",
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick, args.sizes)
    started = time.monotonic()

    def log(text):
        print("[%5.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    run.ensure_venv(log)
    digest = run.snapshot_subject(args.subject)
    machine = run.machine_info()
    machine["munsit_progress_sha256"] = digest
    workdir = tempfile.mkdtemp(prefix="munsit-lookup-")
    try:
        results = measure(settings, workdir, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": dict(vars(settings)),
        "results": results,
        "targets": judge(results, settings),
        "look_in_batch": look_in_batch(results),
        "harness_problems": list(run_findings(results, "problems")),
        "notes": list(run_findings(results, "notes")),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.monotonic() - started,
    }
    path = args.json or os.path.join(
        HERE, "lookup-results-quick.json" if args.quick else "lookup-results.json"
    )
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(render(report))
    print("JSON written to %s" % path)
    for problem in report["harness_problems"]:
        print("harness problem: %s" % problem, file=sys.stderr)
    return 1 if report["harness_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
