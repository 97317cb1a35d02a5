"""Benchmark the batch command (munsit-progress denoise FILE... -o DIR --jobs N).

    python benchmarks/batch.py                  # full run: about 15 minutes on 2 cores
    python benchmarks/batch.py --quick          # does the harness work: about 1 minute
    python benchmarks/batch.py --json out.json  # where the JSON goes
    python benchmarks/batch.py --skip-loop      # leave out the shell-loop baseline (~11 min)
    python benchmarks/batch.py --subject old/munsit_progress.py   # measure another version

Every run talks to munsit_progress.demo_server (the simulator: each job
streams 11 progress steps over about D seconds, with heartbeat comments, and
its result is the uploaded file), started in a process of its own for each
measurement, so that the client's memory and CPU are measured alone.  The
inputs are small WAV files (4 KB, distinct content) in a temporary folder;
every output is checked to be the input's bytes, and every output folder is
new (a rerun into the same folder would skip everything).

The client is the installed command's entry point (``python -c "import sys,
munsit_progress; sys.exit(munsit_progress.main())"``, what the
``munsit-progress`` console script runs), with -q, its stdout and stderr to
files.  It is started through GNU time (/usr/bin/time), which gives its wall
time, user and system CPU and peak RSS (ru_maxrss: see upload.py for why not
os.wait4's); a thread of this process samples /proc/PID/status and
/proc/PID/stat every 50 ms for the peak thread count and the CPU over time.

The measurements (full mode; --quick scales them down):

1. one job: one file, --jobs 1, D = 3 s, median of 3 runs;
2. 200 files at --jobs 20, D = 3 s: wall time against the ideal,
   ceil(200 / 20) x one job; peak RSS and threads;
3. memory per job in flight: 20 files at --jobs 20 against 20 files at
   --jobs 1 (D = 3 s): the difference in peak RSS (and threads) over 19;
4. CPU while waiting: 20 files at --jobs 20, D = 60 s: the client's CPU
   seconds (user + sys) over the wall time, as % of one core; also split into
   the first 5 s (start-up and uploads) and the rest;
5. the baseline: the 200 files one after another by a bash loop over the
   one-file command (``denoise FILE -o OUT -q``), as without batches.

Targets (from the issue), judged, never asserted: within 10% of the ideal
time, memory growth under 1 MB per job in flight, CPU under 1% of a core.
The exit status is 1 only when a run failed (a nonzero exit status or a
missing or wrong output), never for a missed target.

Uses benchmarks/.venv and the helpers of benchmarks/run.py; munsit_progress.py
is copied at the start (one run measures one version while the checkout is
being edited) and the JSON records its SHA-256.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402 (benchmarks/run.py: the venv, the snapshot, the machine)

GNU_TIME = "/usr/bin/time"
API_KEY = "demo"
MIB = 1024 * 1024
MB = 10**6
SAMPLE_INTERVAL = 0.05
UPLOAD_PHASE = 5.0  # seconds: the CPU before this is start-up and uploads
# What the munsit-progress console script runs.
ENTRY = "import sys, munsit_progress; sys.exit(munsit_progress.main())"
# The simulator, in a process of its own: it prints its base URL, then serves
# until its stdin closes (or its lifetime ends, so it never outlives us).
SERVER_SCRIPT = """\
import os, sys, threading
import munsit_progress
guard = threading.Timer(float(sys.argv[2]), os._exit, (3,))
guard.daemon = True
guard.start()
with munsit_progress.demo_server(duration=float(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.read()
"""


class Settings:
    """How much a mode measures."""

    def __init__(self, quick):
        self.quick = quick
        self.duration = 1.0 if quick else 3.0
        self.one_job_runs = 1 if quick else 3
        self.batch_files = 40 if quick else 200
        self.jobs = 20
        self.memory_files = 5 if quick else 20
        self.memory_jobs = 5 if quick else 20
        self.long_duration = 10.0 if quick else 60.0
        self.long_files = 20
        self.loop_files = 10 if quick else 200
        self.server_lifetime = 900.0 if quick else 3600.0


# --------------------------------------------------------------------------
# Inputs and the simulator
# --------------------------------------------------------------------------


def write_inputs(folder, count):
    """``count`` 4 KB WAV files (16 kHz mono, 0.125 s), each a different tone."""
    paths = []
    for number in range(count):
        path = os.path.join(folder, "take-%03d.wav" % (number + 1))
        frequency = 200.0 + 7.0 * number
        frames = [int(8000 * math.sin(2 * math.pi * frequency * i / 16000.0)) for i in range(2000)]
        with wave.open(path, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(struct.pack("<%dh" % len(frames), *frames))
        paths.append(path)
    return paths


class Simulator:
    """munsit_progress.demo_server(duration=...) in its own process."""

    def __init__(self, duration, lifetime, workdir):
        self.log_path = os.path.join(workdir, "server-%d.log" % time.monotonic_ns())
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [run.VENV_PYTHON, "-c", SERVER_SCRIPT, repr(duration), repr(lifetime)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=run.child_env(),
            cwd=workdir,
            start_new_session=True,
        )
        found = []
        reader = threading.Thread(
            target=lambda: found.append(self.proc.stdout.readline()), daemon=True
        )
        reader.start()
        reader.join(30)
        line = found[0].decode("ascii", "replace").strip() if found else ""
        if not line.startswith("http://127.0.0.1:"):
            self.close()
            raise RuntimeError("the simulator did not start: %r (see %s)" % (line, self.log_path))
        self.url = line

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.proc.wait(5)
        self.log_file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def kill_group(pid):
    """End a run that overran its time limit (and GNU time above it)."""
    try:
        os.killpg(pid, 9)
    except OSError:
        pass  # it ended just now


# --------------------------------------------------------------------------
# Running the client
# --------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def child_of(pid):
    """The first child of ``pid`` (the client under GNU time), or None."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def read_sample(pid):
    """(VmHWM KiB, VmRSS KiB, threads, CPU seconds) of a live process, or None."""
    try:
        with open("/proc/%d/status" % pid) as f:
            status = f.read()
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    try:
        after = stat.rsplit(")", 1)[1].split()  # the name may hold spaces
        cpu = (int(after[11]) + int(after[12])) / CLOCK_TICKS  # utime, stime
        return int(fields["VmHWM"][0]), int(fields["VmRSS"][0]), int(fields["Threads"][0]), cpu
    except (KeyError, IndexError, ValueError):
        return None  # a zombie has no VmHWM


class Sampler(threading.Thread):
    """Samples the client (the child of GNU time) every SAMPLE_INTERVAL."""

    def __init__(self, pid, started, under_time):
        super().__init__(daemon=True)
        self.pid = pid
        self.started = started
        self.under_time = under_time
        self.samples = []  # (seconds since start, VmHWM, VmRSS, threads, CPU s)
        self.stopping = threading.Event()

    def run(self):
        target = None
        while not self.stopping.is_set():
            if target is None:
                target = child_of(self.pid) if self.under_time else self.pid
            if target is not None:
                sample = read_sample(target)
                if sample is not None:
                    self.samples.append((time.monotonic() - self.started,) + sample)
            self.stopping.wait(SAMPLE_INTERVAL)

    def summary(self):
        if not self.samples:
            return {"samples": 0}
        first_phase = [s for s in self.samples if s[0] <= UPLOAD_PHASE]
        # The CPU used so far, about once a second: where a run spends it.
        timeline, next_at = [], 0.0
        for sample in self.samples:
            if sample[0] >= next_at:
                timeline.append([round(sample[0], 2), round(sample[4], 2), sample[3]])
                next_at = math.floor(sample[0]) + 1.0
        return {
            "timeline_s_cpu_threads": timeline,
            "samples": len(self.samples),
            "peak_threads": max(s[3] for s in self.samples),
            "sampled_hwm_kb": max(s[1] for s in self.samples),
            "cpu_first_s": first_phase[-1][4] if first_phase else None,
            "first_until_s": first_phase[-1][0] if first_phase else None,
        }


def run_timed(command, limit, workdir, label, sample=True, env=None):
    """Run one command through GNU time; return a dict of what it measured."""
    stdout_path = os.path.join(workdir, "%s.out" % label)
    stderr_path = os.path.join(workdir, "%s.err" % label)
    time_path = os.path.join(workdir, "%s.time" % label)
    under_time = os.access(GNU_TIME, os.X_OK)
    if under_time:
        command = [GNU_TIME, "-f", "%e %U %S %M", "-o", time_path] + command
    started = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env or run.child_env(),
            cwd=workdir,
            start_new_session=True,
        )
        sampler = Sampler(proc.pid, started, under_time) if sample else None
        if sampler:
            sampler.start()
        killed = []

        def overran():
            killed.append(True)
            kill_group(proc.pid)

        killer = threading.Timer(limit, overran)
        killer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        killer.cancel()
        if sampler:
            sampler.stopping.set()
            sampler.join(5)
    result = {
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "killed": bool(killed),
    }
    if under_time:
        try:
            with open(time_path) as f:
                # GNU time adds a line first when the exit status is not 0.
                last = f.read().strip().splitlines()[-1].split()
            result["user_s"], result["sys_s"] = float(last[1]), float(last[2])
            result["peak_kb"] = int(last[3])
        except (OSError, IndexError, ValueError):
            pass  # killed at the time limit, GNU time with it
    else:
        result["user_s"], result["sys_s"] = usage.ru_utime, usage.ru_stime
    if sampler:
        result.update(sampler.summary())
        if "peak_kb" not in result and result.get("sampled_hwm_kb"):
            result["peak_kb"] = result["sampled_hwm_kb"]
    if "user_s" in result:
        result["cpu_s"] = result["user_s"] + result["sys_s"]
    if result["exit"] != 0:
        with open(stderr_path, "rb") as f:
            said = f.read().decode("utf-8", "replace").strip().splitlines() or ["no output"]
        result["stderr_tail"] = ("killed after %g s; " % limit if killed else "") + said[-1][-300:]
    return result


def client_command(*arguments):
    return [run.VENV_PYTHON, "-c", ENTRY] + list(arguments)


def check_outputs(inputs, folder):
    """Problems with the saved files: each input saved under its name, same bytes."""
    missing, wrong = [], []
    for path in inputs:
        saved = os.path.join(folder, os.path.basename(path))
        if not os.path.exists(saved):
            missing.append(os.path.basename(path))
            continue
        with open(path, "rb") as a, open(saved, "rb") as b:
            if a.read() != b.read():
                wrong.append(os.path.basename(path))
    problems = []
    if missing:
        problems.append(
            "%d of %d outputs missing (%s...)" % (len(missing), len(inputs), missing[0])
        )
    if wrong:
        problems.append("%d outputs differ from their input (%s...)" % (len(wrong), wrong[0]))
    return problems


def batch_run(inputs, jobs, duration, settings, workdir, label, log):
    """One batch command against a fresh simulator; its measures and problems."""
    out_dir = os.path.join(workdir, label)  # new for every run: a rerun would skip all
    rounds = math.ceil(len(inputs) / jobs)
    limit = 120 + rounds * (duration + 10) * 3
    with Simulator(duration, settings.server_lifetime, workdir) as server:
        command = client_command(
            "denoise", *inputs, "-o", out_dir + os.sep, "--jobs", str(jobs),
            "--base-url", server.url, "-q",
        )  # fmt: skip
        env = run.child_env()
        env["MUNSIT_API_KEY"] = API_KEY
        result = run_timed(command, limit, workdir, label, env=env)
    result.update({"files": len(inputs), "jobs": jobs, "duration": duration})
    problems = run_problems(result, inputs, out_dir)
    result["problems"] = problems
    log(
        "%-14s %3d files --jobs %-2d D=%gs: %s, wall %.2f s, CPU %s s, peak RSS %s MiB, "
        "threads %s"
        % (
            label,
            len(inputs),
            jobs,
            duration,
            "; ".join(problems) or "ok",
            result["wall_s"],
            fmt(result.get("cpu_s"), "%.2f"),
            fmt_kb(result.get("peak_kb")),
            result.get("peak_threads", "-"),
        )
    )
    return result


def run_problems(result, inputs, out_dir):
    """What went wrong in a client run: its exit status, then its outputs."""
    problems = []
    if result["exit"] != 0:
        problems.append(
            "exit status %s: %s" % (result["exit"], result.get("stderr_tail", "killed"))
        )
    return problems + check_outputs(inputs, out_dir)


def loop_run(inputs, duration, settings, workdir, log):
    """The baseline: bash runs the one-file command on each input in turn."""
    out_dir = os.path.join(workdir, "loop")
    os.makedirs(out_dir)
    script = (
        'fail=0; for f in "$@"; do '
        '"$BENCH_PY" -c "$BENCH_ENTRY" denoise "$f" -o "$BENCH_OUT/${f##*/}" '
        '--base-url "$BENCH_URL" -q || fail=1; done; exit $fail'
    )
    limit = 300 + len(inputs) * (duration + 15)
    with Simulator(duration, settings.server_lifetime, workdir) as server:
        env = run.child_env()
        env.update(
            MUNSIT_API_KEY=API_KEY,
            BENCH_PY=run.VENV_PYTHON,
            BENCH_ENTRY=ENTRY,
            BENCH_OUT=out_dir,
            BENCH_URL=server.url,
        )
        result = run_timed(
            ["bash", "-c", script, "bash"] + inputs, limit, workdir, "loop", sample=False, env=env
        )
    result.update({"files": len(inputs), "duration": duration})
    problems = run_problems(result, inputs, out_dir)
    result["problems"] = problems
    log(
        "shell loop     %3d files one by one D=%gs: %s, wall %.1f s, CPU %s s"
        % (
            len(inputs),
            duration,
            "; ".join(problems) or "ok",
            result["wall_s"],
            fmt(result.get("cpu_s"), "%.1f"),
        )
    )
    return result


# --------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------


def measure(inputs, settings, workdir, log, skip_loop):
    results = {}
    d = settings.duration

    runs = [
        batch_run(inputs[:1], 1, d, settings, workdir, "one-job-%d" % (n + 1), log)
        for n in range(settings.one_job_runs)
    ]
    walls = [r["wall_s"] for r in runs if not r["problems"]]
    results["one_job"] = {"runs": runs, "median_s": statistics.median(walls) if walls else None}

    batch = batch_run(
        inputs[: settings.batch_files], settings.jobs, d, settings, workdir, "batch", log
    )
    one = results["one_job"]["median_s"]
    rounds = math.ceil(settings.batch_files / settings.jobs)
    batch["rounds"] = rounds
    batch["ideal_s"] = rounds * one if one else None
    batch["ratio_to_ideal"] = batch["wall_s"] / batch["ideal_s"] if one else None
    results["batch"] = batch

    serial = batch_run(inputs[: settings.memory_files], 1, d, settings, workdir, "memory-j1", log)
    wide = batch_run(
        inputs[: settings.memory_files],
        settings.memory_jobs,
        d,
        settings,
        workdir,
        "memory-jN",
        log,
    )
    extra = settings.memory_jobs - 1
    growth = threads = None
    if serial.get("peak_kb") and wide.get("peak_kb"):
        growth = (wide["peak_kb"] - serial["peak_kb"]) / extra / 1024.0
    if serial.get("peak_threads") and wide.get("peak_threads"):
        threads = (wide["peak_threads"] - serial["peak_threads"]) / extra
    results["memory"] = {
        "jobs_1": serial,
        "jobs_n": wide,
        "growth_mib_per_job": growth,
        "threads_per_job": threads,
    }

    long = batch_run(
        inputs[: settings.long_files],
        settings.jobs,
        settings.long_duration,
        settings,
        workdir,
        "cpu-wait",
        log,
    )
    if long.get("cpu_s") is not None:
        long["core_pct"] = 100.0 * long["cpu_s"] / long["wall_s"]
        long["cpu_s_per_wall_min"] = long["cpu_s"] / (long["wall_s"] / 60.0)
        first = long.get("cpu_first_s")
        if first is not None:
            rest_wall = long["wall_s"] - long["first_until_s"]
            long["cpu_rest_s"] = long["cpu_s"] - first
            long["first_core_pct"] = 100.0 * first / long["first_until_s"]
            long["rest_core_pct"] = 100.0 * long["cpu_rest_s"] / rest_wall if rest_wall else None
    results["cpu_wait"] = long

    if not skip_loop:
        loop = loop_run(inputs[: settings.loop_files], d, settings, workdir, log)
        if loop["files"] == batch["files"] and not loop["problems"]:
            loop["ratio_to_batch"] = loop["wall_s"] / batch["wall_s"]
        results["loop"] = loop
    return results


def judge(results):
    """The issue's targets: judged, never asserted."""
    verdicts = []
    ratio = results["batch"].get("ratio_to_ideal")
    verdicts.append(
        {
            "target": "batch wall time within 10% of the ideal",
            "met": None if ratio is None else ratio <= 1.10,
            "measured": "-" if ratio is None else "%.3fx the ideal" % ratio,
        }
    )
    growth = results["memory"]["growth_mib_per_job"]
    verdicts.append(
        {
            "target": "memory growth < 1 MB (0.95 MiB) per job in flight",
            "met": None if growth is None else growth * MIB < MB,
            "measured": "-" if growth is None else "%.3f MiB per job" % growth,
        }
    )
    # "While waiting": after the uploads (the first seconds, with the
    # interpreter's start-up), the downloads and the exit included.
    cpu = results["cpu_wait"]
    pct = cpu.get("rest_core_pct")
    whole = cpu.get("core_pct")
    verdicts.append(
        {
            "target": "CPU while waiting < 1% of a core",
            "met": None if pct is None else pct < 1.0,
            "measured": "-"
            if pct is None
            else "%.2f%% of a core after the uploads (%.2f%% over the whole run)" % (pct, whole),
        }
    )
    return verdicts


def harness_problems(results):
    found = []
    for run_ in results["one_job"]["runs"]:
        found += ["one job: %s" % p for p in run_["problems"]]
    found += ["batch: %s" % p for p in results["batch"]["problems"]]
    found += ["memory --jobs 1: %s" % p for p in results["memory"]["jobs_1"]["problems"]]
    found += ["memory --jobs N: %s" % p for p in results["memory"]["jobs_n"]["problems"]]
    found += ["cpu while waiting: %s" % p for p in results["cpu_wait"]["problems"]]
    if "loop" in results:
        found += ["shell loop: %s" % p for p in results["loop"]["problems"]]
    return found


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def fmt_kb(kb):
    return "-" if not kb else "%.1f" % (kb / 1024.0)


def render(report):
    machine, s, r = report["machine"], report["settings"], report["results"]
    out = [
        "munsit_progress batch benchmark (%s mode), %s" % (report["mode"], machine["date"]),
        run.machine_header(machine),
        "load average at start: %s; at end: %s"
        % (
            " ".join("%.2f" % x for x in machine["load_average_at_start"]),
            " ".join("%.2f" % x for x in report["load_average_at_end"]),
        ),
        "simulator: demo_server in its own process; client: the console script's entry "
        "point, -q; peak RSS: %s" % machine["rss_method"],
        "",
    ]
    one, batch, mem, cpu = r["one_job"], r["batch"], r["memory"], r["cpu_wait"]
    rows = [
        [
            "one job (1 file, --jobs 1, D=%gs)" % s["duration"],
            "%s (median of %d: %s)"
            % (
                fmt(one["median_s"], "%.2f s"),
                len(one["runs"]),
                ", ".join("%.2f" % x["wall_s"] for x in one["runs"]),
            ),
        ],
        [
            "%d files --jobs %d (D=%gs): wall" % (batch["files"], batch["jobs"], s["duration"]),
            "%.2f s" % batch["wall_s"],
        ],
        [
            "  ideal = %d x one job" % batch["rounds"],
            "%s; ratio %s"
            % (fmt(batch["ideal_s"], "%.2f s"), fmt(batch["ratio_to_ideal"], "%.3f")),
        ],
        [
            "  peak RSS / peak threads / CPU",
            "%s MiB / %s / %s s"
            % (
                fmt_kb(batch.get("peak_kb")),
                batch.get("peak_threads", "-"),
                fmt(batch.get("cpu_s"), "%.2f"),
            ),
        ],
        [
            "%d files --jobs 1 (D=%gs): peak RSS / threads"
            % (mem["jobs_1"]["files"], s["duration"]),
            "%s MiB / %s (wall %.1f s)"
            % (
                fmt_kb(mem["jobs_1"].get("peak_kb")),
                mem["jobs_1"].get("peak_threads", "-"),
                mem["jobs_1"]["wall_s"],
            ),
        ],
        [
            "%d files --jobs %d (D=%gs): peak RSS / threads"
            % (mem["jobs_n"]["files"], mem["jobs_n"]["jobs"], s["duration"]),
            "%s MiB / %s (wall %.1f s)"
            % (
                fmt_kb(mem["jobs_n"].get("peak_kb")),
                mem["jobs_n"].get("peak_threads", "-"),
                mem["jobs_n"]["wall_s"],
            ),
        ],
        [
            "  per job in flight (difference / %d)" % (mem["jobs_n"]["jobs"] - 1),
            "%s MiB, %s threads"
            % (fmt(mem["growth_mib_per_job"], "%.3f"), fmt(mem["threads_per_job"], "%.2f")),
        ],
        [
            "%d files --jobs %d, D=%gs: wall / CPU"
            % (cpu["files"], cpu["jobs"], s["long_duration"]),
            "%.1f s / %s s (user %s + sys %s)"
            % (
                cpu["wall_s"],
                fmt(cpu.get("cpu_s"), "%.2f"),
                fmt(cpu.get("user_s"), "%.2f"),
                fmt(cpu.get("sys_s"), "%.2f"),
            ),
        ],
        [
            "  CPU per minute of waiting",
            "%s s/min = %s of a core"
            % (fmt(cpu.get("cpu_s_per_wall_min"), "%.2f"), fmt(cpu.get("core_pct"), "%.2f%%")),
        ],
        [
            "  first %s s (start-up, uploads)" % fmt(cpu.get("first_until_s"), "%.1f"),
            "%s s CPU = %s of a core"
            % (fmt(cpu.get("cpu_first_s"), "%.2f"), fmt(cpu.get("first_core_pct"), "%.1f%%")),
        ],
        [
            "  the rest (waiting, downloads, exit)",
            "%s s CPU = %s of a core"
            % (fmt(cpu.get("cpu_rest_s"), "%.2f"), fmt(cpu.get("rest_core_pct"), "%.2f%%")),
        ],
        [
            "  peak RSS / peak threads",
            "%s MiB / %s" % (fmt_kb(cpu.get("peak_kb")), cpu.get("peak_threads", "-")),
        ],
    ]
    if "loop" in r:
        loop = r["loop"]
        rows += [
            [
                "shell loop, %d files one by one (D=%gs)" % (loop["files"], s["duration"]),
                "%.1f s, CPU %s s" % (loop["wall_s"], fmt(loop.get("cpu_s"), "%.1f")),
            ],
            [
                "  loop / batch wall time",
                fmt(loop.get("ratio_to_batch"), "%.1fx"),
            ],
        ]
    else:
        rows.append(["shell loop", "skipped (--skip-loop)"])
    width = max(len(row[0]) for row in rows)
    for label, value in rows:
        out.append("  %s  %s" % (label.ljust(width), value))
    out.append("")
    if report["mode"] == "quick":
        # Scaled down to see that the harness works; the figures are too
        # small and too noisy to judge a target by.
        out.append("Targets (quick mode: indicative only; the full run judges them)")
    else:
        out.append("Targets:")
    for verdict in report["targets"]:
        out.append(
            "  %-6s %-52s %s"
            % (
                {True: "met", False: "MISSED", None: "n/a"}[verdict["met"]],
                verdict["target"],
                verdict["measured"],
            )
        )
    out.append("")
    out.append("took %.0f s" % report["seconds"])
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a scaled-down run: does it work")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the JSON (default benchmarks/batch-results[-quick].json)",
    )
    parser.add_argument(
        "--skip-loop", action="store_true", help="leave out the shell-loop baseline"
    )
    parser.add_argument(
        "--subject",
        metavar="FILE",
        default=os.path.join(run.REPO, "munsit_progress.py"),
        help="the munsit_progress.py to measure (default: the checkout's)",
    )
    args = parser.parse_args(argv)
    settings = Settings(args.quick)
    started = time.monotonic()

    def log(text):
        print("[%5.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    run.ensure_venv(log)
    digest = run.snapshot_subject(args.subject)
    machine = run.machine_info()
    machine["munsit_progress_sha256"] = digest
    machine["rss_method"] = (
        "ru_maxrss via GNU time (%s)" % GNU_TIME
        if os.access(GNU_TIME, os.X_OK)
        else "VmHWM sampled every %g s (no GNU time)" % SAMPLE_INTERVAL
    )
    workdir = tempfile.mkdtemp(prefix="munsit-batch-")
    try:
        count = max(settings.batch_files, settings.memory_files, settings.long_files)
        os.mkdir(os.path.join(workdir, "in"))
        inputs = write_inputs(os.path.join(workdir, "in"), count)
        log("%d inputs in %s" % (len(inputs), workdir))
        results = measure(inputs, settings, workdir, log, args.skip_loop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": dict(vars(settings)),
        "results": results,
        "targets": judge(results),
        "harness_problems": harness_problems(results),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": time.monotonic() - started,
    }
    path = args.json or os.path.join(
        HERE, "batch-results-quick.json" if args.quick else "batch-results.json"
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
