"""The clients under benchmark, one per subprocess.

    python benchmarks/clients.py CLIENT BASE_URL MODE [--profile PATH]

CLIENT is one of CLIENTS below; BASE_URL is the API base the loopback server
in run.py gave for one scenario (the progress stream is at
BASE_URL/denoise/ID/progress); MODE is

- ``count``:   read every event, report how many and how long it took
  (``span``: seconds from the first event to the done event);
- ``delays``:  also report, for each event, how long after the server wrote
  it the event reached this loop (the server puts its CLOCK_MONOTONIC time
  in the message as ``(t=NANOSECONDS)``; that clock is system-wide on Linux);
- ``recover``: munsit_progress only: follow the job with ``wait()`` across a
  dropped connection and report each callback's delay and ``pct``.

Every client parses every event's JSON and hands the loop below the stage
and the message.  The process prints two JSON lines on stdout: its RSS right
after the imports (the peak is reset to it there), then the result with the
peak RSS since.  Run by run.py; stdlib plus the
peers installed in benchmarks/.venv.
"""

import json
import resource
import sys
import time

DENOISE_ID = "5b1d2f7e-3f81-4c2a-9c5d-7a2e91b4c7a1"
API_KEY = "benchmark"
READ_TIMEOUT = 30.0
HEADERS = {"Accept": "text/event-stream", "x-api-key": API_KEY}


def progress_url(base_url):
    return "%s/denoise/%s/progress" % (base_url, DENOISE_ID)


# --------------------------------------------------------------------------
# The clients.  Each ``load_*`` does its imports and returns a function that,
# given the base URL, yields (stage, message) for every event of the stream.
# --------------------------------------------------------------------------


def load_munsit_progress():
    import munsit_progress

    def events(base_url):
        for event in munsit_progress.iter_events(
            DENOISE_ID, api_key=API_KEY, base_url=base_url, read_timeout=READ_TIMEOUT
        ):
            if event.stage == "processing":
                yield "processing", event.message
            else:
                yield event.stage, None

    return events


def load_docs_httpx():
    # The API documentation's Python example, as written there.
    import httpx

    def events(base_url):
        with httpx.stream(
            "GET", progress_url(base_url), headers=HEADERS, timeout=READ_TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    payload = json.loads(line[6:])
                    yield payload.get("stage"), payload.get("message")

    return events


def load_docs_requests():
    # The same example done with requests (iter_lines' default 512-byte reads).
    import requests

    def events(base_url):
        with requests.get(
            progress_url(base_url), headers=HEADERS, stream=True, timeout=READ_TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    payload = json.loads(line[6:])
                    yield payload.get("stage"), payload.get("message")

    return events


def load_sseclient_py():
    # sseclient-py over a requests stream, as its README shows it.
    import requests
    import sseclient

    def events(base_url):
        response = requests.get(
            progress_url(base_url), headers=HEADERS, stream=True, timeout=READ_TIMEOUT
        )
        client = sseclient.SSEClient(response)
        try:
            for event in client.events():
                payload = json.loads(event.data)
                yield payload.get("stage"), payload.get("message")
        finally:
            client.close()

    return events


def load_requests_sse():
    from datetime import timedelta

    from requests_sse import EventSource

    def events(base_url):
        with EventSource(
            progress_url(base_url),
            timeout=READ_TIMEOUT,
            headers={"x-api-key": API_KEY},
            max_connect_retry=0,
            reconnection_time=timedelta(seconds=1),
        ) as source:
            for event in source:
                payload = json.loads(event.data)
                yield payload.get("stage"), payload.get("message")

    return events


def load_httpx_sse():
    import httpx
    from httpx_sse import connect_sse

    def events(base_url):
        with httpx.Client(timeout=READ_TIMEOUT) as client:
            with connect_sse(
                client, "GET", progress_url(base_url), headers={"x-api-key": API_KEY}
            ) as source:
                for event in source.iter_sse():
                    payload = json.loads(event.data)
                    yield payload.get("stage"), payload.get("message")

    return events


def load_floor():
    # The most a Python client can do: a socket, a line split, json.loads.
    # No HTTP parsing beyond the header block: chunk-size lines never start
    # with "data: " because the server ends every chunk on an event boundary.
    # It cannot read a gzip body.
    import socket
    from urllib.parse import urlsplit

    def events(base_url):
        url = urlsplit(progress_url(base_url))
        sock = socket.create_connection((url.hostname, url.port), timeout=READ_TIMEOUT)
        try:
            request = "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n" % (
                url.path,
                url.netloc,
            )
            sock.sendall(request.encode("ascii") + b"x-api-key: benchmark\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed in the response head")
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            if b"content-encoding: gzip" in head.lower():
                raise NotImplementedError("the floor does not decode gzip")
            held = [rest]
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                held.append(data)
                if b"\n" not in data:
                    continue
                block = b"".join(held)
                cut = block.rindex(b"\n") + 1
                held = [block[cut:]]
                # One decode per read, cut at a line end (never inside a
                # UTF-8 sequence); json.loads on str skips its encoding sniff.
                for line in block[:cut].decode("utf-8").split("\n"):
                    if line.startswith("data: "):
                        payload = json.loads(line[6:])
                        yield payload.get("stage"), payload.get("message")
        finally:
            sock.close()

    return events


CLIENTS = {
    "munsit_progress": load_munsit_progress,
    "docs-httpx": load_docs_httpx,
    "docs-requests": load_docs_requests,
    "sseclient-py": load_sseclient_py,
    "requests-sse": load_requests_sse,
    "httpx-sse": load_httpx_sse,
    "floor": load_floor,
}


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def sent_at(message):
    """The server's CLOCK_MONOTONIC stamp (ns) in a message '... (t=NS)'."""
    return int(message[message.rindex("=") + 1 : -1])


def consume(events, base_url, record_delays):
    """Read the stream to its done event.

    Returns (processing events, delays in ms or None, whether done came,
    seconds from the first event to the done event)."""
    count = 0
    delays = [] if record_delays else None
    clock = time.monotonic_ns
    stream = events(base_url)
    first = None
    try:
        for stage, message in stream:
            # The first event starts the clock for the rate, so that the
            # connection set-up (an SSL context for httpx) is not counted.
            first = time.perf_counter()
            if stage != "processing":
                return count, delays, stage == "done", 0.0
            count += 1
            if delays is not None:
                delays.append((clock() - sent_at(message)) / 1e6)
            break
        for stage, message in stream:
            if stage != "processing":
                return count, delays, stage == "done", time.perf_counter() - first
            count += 1
            if delays is not None:
                delays.append((clock() - sent_at(message)) / 1e6)
    finally:
        stream.close()
    return count, delays, False, None


def recover(base_url):
    """wait() across a dropped connection: (pct, delay ms) per callback."""
    import munsit_progress

    seen = []

    def on_progress(event):
        seen.append((event.pct, (time.monotonic_ns() - sent_at(event.message)) / 1e6))

    munsit_progress.wait(
        DENOISE_ID,
        on_progress=on_progress,
        timeout=30,
        api_key=API_KEY,
        base_url=base_url,
        read_timeout=READ_TIMEOUT,
    )
    return seen


def status_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError("no %s in /proc/self/status" % field)


def start_peak_rss_kb():
    """The RSS now, with the peak reset to it, so that the peak read at the
    end counts from here and not from the imports' own transient peak."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # Linux: reset the peak RSS (VmHWM)
        return status_kb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def peak_rss_kb():
    try:
        return status_kb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main(argv):
    name, base_url, mode = argv[:3]
    profile_path = argv[4] if len(argv) > 4 and argv[3] == "--profile" else None
    if mode == "recover":
        import munsit_progress  # noqa: F401  (measured after the imports)

        events = None
    else:
        events = CLIENTS[name]()
    report(baseline_kb=start_peak_rss_kb())
    started = time.perf_counter()
    try:
        if mode == "recover":
            callbacks = recover(base_url)
            result = {"callbacks": callbacks}
        elif profile_path:
            import cProfile

            profiler = cProfile.Profile()
            count, delays, done, span = profiler.runcall(consume, events, base_url, False)
            profiler.dump_stats(profile_path)
            result = {"events": count, "done": done, "span": span}
        else:
            count, delays, done, span = consume(events, base_url, mode == "delays")
            result = {"events": count, "done": done, "span": span}
            if delays is not None:
                result["delays_ms"] = delays
    except Exception as exc:  # the outcome is data here: report it, do not crash
        result = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:160])}
    result["elapsed"] = time.perf_counter() - started
    result["peak_kb"] = peak_rss_kb()
    report(**result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
