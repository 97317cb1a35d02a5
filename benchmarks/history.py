"""Benchmark what a batch's history costs (issue 16): start-up and memory
with a long journal, and a rerun over saved, unchanged inputs.

    python benchmarks/history.py                  # full run: 365,000 inputs of history
    python benchmarks/history.py --quick          # does the harness work: under a minute
    python benchmarks/history.py --json out.json  # where the JSON goes
    python benchmarks/history.py --subject old/munsit_progress.py   # measure another version

The measurements (full mode; --quick scales them down):

1. start-up: a batch over 1,000 new files (4 KB WAVs) into a folder whose
   journal holds a history of 0, then 365,000 inputs (three steps each:
   sending, submitted, saved).  Start-up is the time from the client's
   first line (before it imports anything) to the first POST reaching a
   loopback fake API; the peak RSS is the client's own (ru_maxrss of
   RUSAGE_SELF, written by the launcher as the client ends).
2. rerun: 10,000 inputs (100 KB each) whose outputs are saved, run again
   unchanged: the client's CPU seconds (user + sys) beyond those of the
   same command over one saved input, and the bytes it read
   (/proc/self/io rchar) beyond that one's.

The histories are written by the journal's own writer: the measured
module's ``_Journal.record_all`` (0.5), or, for 0.4 (``--subject`` a copy of
``git show aed323e:munsit_progress.py``), its ``_Journal._line`` appended to
the JSON-lines journal.  The saved inputs of the rerun are made the same
way, with each file's stat noted (``_Journal.remember``) where the module
has it, as a first run would have.

Nothing is judged or asserted: the figures go in the README.  Needs only
the Python running it, with requests.
"""

import argparse
import datetime
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Runs the client in-process, then writes its own figures: when it began
# (before any import), its CPU, its peak RSS and the bytes it read.
LAUNCHER = """\
import time
began = time.time()
import json, os, resource, sys
sys.path.insert(0, sys.argv[1])
import munsit_progress
try:
    code = munsit_progress.main(sys.argv[3:])
finally:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {"began": began, "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_kb": usage.ru_maxrss}
    if os.path.exists("/proc/self/io"):
        with open("/proc/self/io") as io:
            for line in io:
                name, _, value = line.partition(":")
                figures[name] = int(value)
    with open(sys.argv[2], "w") as out:
        json.dump(figures, out)
sys.exit(code)
"""

# Writes a history into a folder, through the measured module's journal.
BUILDER = """\
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
import munsit_progress as mp
folder, count, saved_list = sys.argv[2], int(sys.argv[3]), sys.argv[4]
at = time.time() - 30 * 86400
def steps(index, key, size, name):
    job = "%08x-0000-4000-8000-%012x" % (index, index)
    content = mp._Content(key, size)
    return [("sending", content, {"file": name}), ("submitted", content, {"denoiseId": job}),
            ("saved", content, {"denoiseId": job, "output": name})]
saved = json.load(open(saved_list)) if saved_list != "-" else []
new = hasattr(mp._Journal, "record_all")
if new:
    journal = mp._Journal(folder)
    journal._db.execute("PRAGMA cache_size=-262144")  # building, not measured
    batch = []
    def flush():
        journal.record_all(batch, at=at)
        del batch[:]
else:
    out = open(os.path.join(folder, mp.JOURNAL_NAME), "ab")
    out.write(mp._Journal._line({"journal": "munsit-progress batch", "version": 1}))
for index in range(count):
    key = hashlib.sha256(b"history %d" % index).hexdigest()
    all_steps = steps(index, key, 8000000 + index, "old%07d.wav" % index)
    if new:
        batch.extend(all_steps)
        if len(batch) >= 150000:
            flush()
    else:
        for event, content, fields in all_steps:
            record = dict(event=event, sha256=content.sha256, size=content.size, at=at)
            record.update(fields)
            out.write(mp._Journal._line(record))
for index, path in enumerate(saved):
    data = open(path, "rb").read()
    content = mp._Content(hashlib.sha256(data).hexdigest(), len(data))
    name = os.path.basename(path)
    with open(os.path.join(folder, name), "wb") as target:
        target.write(data)
    all_steps = steps(count + index, content.sha256, content.size, name)
    if new:
        batch.extend(all_steps)
        real = os.path.realpath(path)
        journal.remember(real, os.stat(real), content)
    else:
        for event, content_, fields in all_steps:
            record = dict(event=event, sha256=content_.sha256, size=content_.size, at=at)
            record.update(fields)
            out.write(mp._Journal._line(record))
if new:
    flush()
    journal.close()
else:
    out.close()
"""


class Settings:
    def __init__(self, quick):
        self.history = 20_000 if quick else 365_000
        self.new_files = 50 if quick else 1_000
        self.rerun_files = 300 if quick else 10_000
        self.rerun_size = 20_000 if quick else 100_000
        self.jobs = 8


class FakeAPI(http.server.BaseHTTPRequestHandler):
    """The endpoints a batch uses, answering at once; notes the first POST."""

    protocol_version = "HTTP/1.1"
    first_post = None
    lock = threading.Lock()
    count = 0

    def log_message(self, *args):
        pass

    def _send(self, status, body, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        now = time.time()
        with FakeAPI.lock:
            if FakeAPI.first_post is None:
                FakeAPI.first_post = now
            FakeAPI.count += 1
            job = "%08x-1111-4111-8111-%012x" % (FakeAPI.count, FakeAPI.count)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, json.dumps({"jobId": job, "denoiseId": job}).encode())

    def do_GET(self):
        if self.path.startswith("/api/v1/denoise?") or self.path == "/api/v1/denoise":
            self._send(200, b"[]")
        elif self.path.endswith("/progress"):
            job = self.path.split("/")[-2]
            host = "http://%s:%d" % self.server.server_address[:2]
            done = {"stage": "done", "url": "%s/files/%s.wav" % (host, job), "denoiseId": job}
            self._send(200, b"data: " + json.dumps(done).encode() + b"\n\n", "text/event-stream")
        elif self.path.startswith("/files/"):
            self._send(200, b"RIFF" + b"\0" * 60, "audio/wav")
        else:
            self._send(404, b"{}")


def write_inputs(folder, count, size, label):
    """``count`` distinct files of ``size`` bytes, dated an hour back (a
    night's inputs are older than the moments the journal distrusts)."""
    os.makedirs(folder)
    paths = []
    header = b"RIFF" + b"\0" * 40
    for index in range(count):
        path = os.path.join(folder, "%s%06d.wav" % (label, index))
        with open(path, "wb") as f:
            f.write(header + hashlib.sha256(b"%s %d" % (label.encode(), index)).digest())
            f.write(os.urandom(size - len(header) - 32))
        stamp = time.time() - 3600
        os.utime(path, (stamp, stamp))
        paths.append(path)
    return paths


def build(subject_dir, folder, count, saved):
    os.makedirs(folder, exist_ok=True)
    listing = "-"
    if saved:
        listing = folder + ".saved.json"
        with open(listing, "w") as f:
            json.dump(saved, f)
    subprocess.run(
        [sys.executable, "-c", BUILDER, subject_dir, folder, str(count), listing], check=True
    )


def client(subject_dir, base_url, folder, inputs, workdir, label):
    figures_path = os.path.join(workdir, label + ".figures.json")
    FakeAPI.first_post = None
    command = [sys.executable, "-c", LAUNCHER, subject_dir, figures_path]
    command += ["denoise", "-q", "--no-check", "--jobs", "8", "--allow-http"]
    command += ["--base-url", base_url, "-o", folder + os.sep] + inputs
    env = dict(os.environ, MUNSIT_API_KEY="benchmark-key")
    started = time.time()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(figures_path) as f:
        figures = json.load(f)
    figures["exit_status"] = result.returncode
    figures["wall_s"] = time.time() - started
    if result.returncode != 0:
        figures["stderr"] = result.stderr.decode("utf-8", "replace")[-2000:]
    if FakeAPI.first_post is not None:
        figures["startup_s"] = FakeAPI.first_post - figures["began"]
    return figures


def measure(subject_dir, settings, base_url, workdir, log):
    histories = {}
    for count in (0, settings.history):
        folder = os.path.join(workdir, "out-%d" % count)
        log("history of %d inputs: building" % count)
        started = time.time()
        build(subject_dir, folder, count, [])
        built = time.time() - started
        inputs = write_inputs(
            os.path.join(workdir, "new-%d" % count), settings.new_files, 4096, "new"
        )
        log("history of %d inputs: %d new files" % (count, len(inputs)))
        figures = client(subject_dir, base_url, folder, inputs, workdir, "history-%d" % count)
        journal_bytes = sum(
            os.path.getsize(os.path.join(folder, name))
            for name in os.listdir(folder)
            if name.startswith(".munsit-batch")
        )
        histories[str(count)] = {
            "startup_s": round(figures.get("startup_s", float("nan")), 3),
            "peak_rss_mb": round(figures["peak_rss_kb"] / 1024, 1),
            "cpu_s": round(figures["cpu_s"], 2),
            "wall_s": round(figures["wall_s"], 2),
            "exit_status": figures["exit_status"],
            "journal_mb": round(journal_bytes / 1e6, 1),
            "build_s": round(built, 1),
        }
        if "stderr" in figures:
            histories[str(count)]["stderr"] = figures["stderr"]
        log("  %s" % histories[str(count)])
    log("rerun: %d saved inputs of %d bytes" % (settings.rerun_files, settings.rerun_size))
    inputs = write_inputs(
        os.path.join(workdir, "saved"), settings.rerun_files, settings.rerun_size, "kept"
    )
    folder = os.path.join(workdir, "out-rerun")
    build(subject_dir, folder, 0, inputs)
    one = client(subject_dir, base_url, folder, inputs[:1], workdir, "rerun-one")
    uploads_before = FakeAPI.count
    every = client(subject_dir, base_url, folder, inputs, workdir, "rerun-all")
    total = settings.rerun_files * settings.rerun_size
    rerun = {
        "files": settings.rerun_files,
        "gb": round(total / 1e9, 3),
        "cpu_s": round(every["cpu_s"] - one["cpu_s"], 2),
        "cpu_s_whole_run": round(every["cpu_s"], 2),
        "cpu_s_one_input": round(one["cpu_s"], 2),
        "read_mb_beyond_one_input": round((every.get("rchar", 0) - one.get("rchar", 0)) / 1e6, 1),
        "uploads": FakeAPI.count - uploads_before,
        "exit_status": every["exit_status"],
    }
    log("  %s" % rerun)
    return {"histories": histories, "rerun_unchanged": rerun}


def machine():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import sqlite3

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": "%s %s" % (platform.system(), platform.release()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down run: does it work")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default benchmarks/history-results[-quick].json)",
    )
    parser.add_argument(
        "--subject",
        metavar="FILE",
        default=os.path.join(REPO, "munsit_progress.py"),
        help="the munsit_progress.py to measure (default: the checkout's)",
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    started = time.monotonic()

    def log(text):
        print("[%6.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="munsit-history-")
    subject_dir = os.path.join(workdir, "subject")
    os.mkdir(subject_dir)
    shutil.copy2(args.subject, os.path.join(subject_dir, "munsit_progress.py"))
    with open(args.subject, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    version = subprocess.run(
        [sys.executable, "-c", "import munsit_progress as m; print(m.__version__)"],
        cwd=subject_dir,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout.strip()
    report = {"mode": "quick" if args.quick else "full", "machine": machine()}
    report["machine"].update(munsit_progress=version, munsit_progress_sha256=digest)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = "http://127.0.0.1:%d/api/v1" % server.server_address[1]
    try:
        report.update(measure(subject_dir, settings, base_url, workdir, log))
    finally:
        server.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    report["settings"] = dict(vars(settings))
    report["seconds"] = round(time.monotonic() - started, 1)
    path = args.json or os.path.join(
        HERE, "history-results-quick.json" if args.quick else "history-results.json"
    )
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    m = report["machine"]
    print(
        "%s, %d cores, Python %s, SQLite %s; munsit_progress %s (sha256 %s); %s"
        % (
            m["cpu"],
            m["cores"],
            m["python"],
            m["sqlite"],
            version,
            digest[:12],
            m["date"],
        )
    )
    for count, figures in report["histories"].items():
        print(
            "history %7s inputs: first upload %.2f s after start, peak RSS %.1f MB, journal %.1f MB"
            % (count, figures["startup_s"], figures["peak_rss_mb"], figures["journal_mb"])
        )
    rerun = report["rerun_unchanged"]
    print(
        "rerun over %d saved unchanged inputs (%.2f GB): %.2f CPU-s beyond one input's, "
        "%.1f MB read beyond one input's"
        % (rerun["files"], rerun["gb"], rerun["cpu_s"], rerun["read_mb_beyond_one_input"])
    )
    print("JSON written to %s" % path)
    failed = [f for f in report["histories"].values() if f["exit_status"] != 0]
    return 1 if failed or rerun["exit_status"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
