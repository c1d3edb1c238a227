"""A store whose PUTs ignore ``If-None-Match: *`` is refused before anything is written: delta-rs commits rely on
the header, and without it two runs at once silently lose one's commit. A real S3 server (moto) behind a small HTTP
proxy that strips the header plays such a store; moto itself, which honours it, is the safe one. The CLI in a
subprocess, as an operator meets it."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.harness import cli, cli_env

pytestmark = pytest.mark.integration


class _Stripping(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the upstream S3 server without its If-None-Match header."""

    protocol_version = "HTTP/1.1"  # answers Expect: 100-continue, keeps connections
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("if-none-match", "host", "expect", "transfer-encoding", "content-length")}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # a HEAD says the object's length, with no body
        length = answer.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if not size:
                while self.rfile.readline().strip():  # trailers
                    pass
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def unsafe_endpoint(s3_options: dict[str, str]) -> Iterator[str]:
    host, port = s3_options["AWS_ENDPOINT_URL"].removeprefix("http://").split(":")
    handler = type("Handler", (_Stripping,), {"upstream": (host, int(port))})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _keys(s3_options: dict[str, str], prefix: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_options["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    found = client.list_objects_v2(Bucket="lake", Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in found if not o["Key"].endswith("/")]  # not the directory markers pyarrow puts


def _env(tmp: Path, s3_options: dict[str, str], endpoint: str, ray_address: str, **extra: str) -> dict[str, str]:
    return cli_env(tmp, ray_address=ray_address, **{**s3_options, "AWS_ENDPOINT_URL": endpoint}, **extra)


def test_a_store_that_ignores_if_none_match_is_refused_before_anything_is_written(
    s3_options: dict[str, str], unsafe_endpoint: str, tmp_path: Path, ray_address: str
) -> None:
    # given: a day of events landed under s3://lake/unsafe, reached through the store that ignores the header
    env = _env(tmp_path, s3_options, unsafe_endpoint, ray_address)
    root = "s3://lake/unsafe"
    landed = cli("demo-data", "--root", root, "--pipeline", "events", "--days", "1", "--users", "20",
                 "--events-per-day", "100", env=env)
    assert landed.returncode == 0, landed.stderr

    # when a run starts on it
    refused = cli("run", "--root", root, "--pipeline", "events", env=env)

    # then it is refused, naming the store and the way out, and nothing but the landed files is there
    assert refused.returncode == 1
    assert f"the object store at {unsafe_endpoint} (root {root}) does not honour conditional writes" in refused.stderr
    assert "allow_unsafe_store" in refused.stderr and "lose data" in refused.stderr
    assert "test" not in refused.stderr.replace("s3://lake", "")  # no credential in the message
    assert all(k.startswith("unsafe/raw/") for k in _keys(s3_options, "unsafe/")), _keys(s3_options, "unsafe/")
    # and status (which writes nothing) still answers there
    assert cli("status", "--root", root, "--pipeline", "events", env=env).returncode == 0

    # when the operator says only one writer ever runs there
    allowed = cli("run", "--root", root, "--pipeline", "events", env={**env, "LAKEHOUSE_ALLOW_UNSAFE_STORE": "true"})

    # then the run goes ahead
    assert allowed.returncode == 0, allowed.stderr
    assert any(k.startswith("unsafe/silver/events/_delta_log/") for k in _keys(s3_options, "unsafe/"))


def test_a_store_that_honours_it_is_written_to_and_the_probe_is_not_left_behind(
    s3_options: dict[str, str], tmp_path: Path, ray_address: str
) -> None:
    env = _env(tmp_path, s3_options, s3_options["AWS_ENDPOINT_URL"], ray_address)
    root = "s3://lake/safe"
    assert cli("demo-data", "--root", root, "--pipeline", "events", "--days", "1", "--users", "20",
               "--events-per-day", "100", env=env).returncode == 0

    done = cli("run", "--root", root, "--pipeline", "events", env=env)

    assert done.returncode == 0, done.stderr
    keys = _keys(s3_options, "safe/")
    assert any(k.startswith("safe/gold/") for k in keys)
    assert not [k for k in keys if "conditional-put-probe" in k], keys
