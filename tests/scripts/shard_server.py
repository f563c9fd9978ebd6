"""An HTTP server on 127.0.0.1 that serves a folder of shards, with faults injected on request.

    python shard_server.py FOLDER PORT [--fail-every N] [--drop-every N] [--fail-once NAME,...]
                           [--drop-once NAME,...] [--truncate NAME] [--accept-put]

--fail-every N: every N-th GET of a .tar answers 503. --drop-every N: every N-th GET of a .tar sends
its headers and half the body, then closes the connection. These follow one request counter across
all files, so which file meets a fault depends on the order of requests (concurrent readers).
--fail-once / --drop-once NAMES: the first GET of each named file fails / drops; the same faults
whatever the order of requests, so a test can count retries exactly. --truncate NAME: that file is
always served cut in half, with a Content-Length that matches (only its checksum can tell).
--accept-put: PUT stores the body (plain or chunked) under the folder, atomically.
"""

import argparse
import collections
import functools
import itertools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FaultyHandler(SimpleHTTPRequestHandler):
    counter = itertools.count(1)
    gets_per_file: collections.Counter = collections.Counter()
    lock = threading.Lock()
    args: argparse.Namespace

    def log_message(self, fmt, *a):  # quiet: the tests read counts, not logs
        pass

    def do_PUT(self):
        if not self.args.accept_put:
            self.send_error(405, "PUT not accepted")
            return
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path = Path(self.translate_path(self.path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("." + path.name + ".part")
        tmp.write_bytes(bytes(body))
        tmp.replace(path)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.name.endswith(".tar") or not path.is_file():
            return super().do_GET()
        with self.lock:
            k = next(self.counter)
            self.gets_per_file[path.name] += 1
            first = self.gets_per_file[path.name] == 1
        a = self.args
        data = path.read_bytes()
        if (a.fail_every and k % a.fail_every == 0) or (first and path.name in a.fail_once):
            self.send_error(503, "injected fault")
            return
        if a.truncate == path.name:
            data = data[: len(data) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if (a.drop_every and k % a.drop_every == 0) or (first and path.name in a.drop_once):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the connection reset mid-body
            return
        self.wfile.write(data)


def names(text: str) -> set[str]:
    return {n for n in text.split(",") if n}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("port", type=int)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--fail-once", type=names, default=set())
    p.add_argument("--drop-once", type=names, default=set())
    p.add_argument("--truncate", default="")
    p.add_argument("--accept-put", action="store_true")
    args = p.parse_args()
    FaultyHandler.args = args
    handler = functools.partial(FaultyHandler, directory=args.folder)
    ThreadingHTTPServer(("127.0.0.1", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
