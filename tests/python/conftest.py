"""Fixtures: the real gateway and mock upstream on random loopback ports, for the official
OpenAI SDK to drive. Processes are killed at the end of the session; every wait is bounded."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TOLLGATE_BIN", str(ROOT / "target" / "debug" / "tollgate"))
ADMIN = "sdk-admin-token-0123456789"
PROVIDER_KEY = "sdk-provider-key"


_GIVEN_PORTS = set()


def free_port():
    """A loopback port free a moment ago and never handed out before in this session (the OS
    may offer a just-closed port again; two servers must not be given the same one)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def wait_http(url, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not open")


def admin(base, path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class Stack:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-sdk-"))
        self.mock_port = free_port()
        self.port = free_port()
        self.procs.append(
            subprocess.Popen(
                [BIN, "mock-upstream", "--listen", f"127.0.0.1:{self.mock_port}", "--api-key", PROVIDER_KEY],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(self.mock_port)
        config = self.dir / "tollgate.toml"
        config.write_text(
            f"""
[server]
listen = ["127.0.0.1:{self.port}"]
data_dir = "{self.dir / 'data'}"
metrics_listen = ""
threads = 2

[billing]
tiers = []   # exact list prices in these tests

[providers.mock]
kind = "mock"
base_url = "http://127.0.0.1:{self.mock_port}/v1"
api_key_env = "SDK_PROVIDER_KEY"
read_timeout_secs = 3

[providers.claude]
kind = "anthropic"
base_url = "http://127.0.0.1:{self.mock_port}/v1"
api_key_env = "SDK_PROVIDER_KEY"
read_timeout_secs = 5

[providers.gem]
kind = "gemini"
base_url = "http://127.0.0.1:{self.mock_port}/v1beta"
api_key_env = "SDK_PROVIDER_KEY"
read_timeout_secs = 5

[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"

[[models]]
slug = "mock/echo-1"
provider = "mock"
upstream_model = "echo-upstream-1"
context_length = 32768
max_output_tokens = 4096
input_per_mtok = 1.00
output_per_mtok = 2.00

# Every provider kind and every endpoint (tests/python/test_providers.py, test_endpoints.py).
# Prices are chosen so that each unit has an exact integer price in nano-USD.

[[models]]
slug = "anthropic/claude-test"
provider = "claude"
upstream_model = "claude-sonnet-4-5"
context_length = 200000
max_output_tokens = 8192
input_per_mtok = 3.00
output_per_mtok = 15.00
capabilities = ["tools", "vision", "json"]

[[models]]
slug = "google/gemini-test"
provider = "gem"
upstream_model = "gemini-2.5-flash"
context_length = 1000000
max_output_tokens = 8192
input_per_mtok = 0.30
output_per_mtok = 2.50
capabilities = ["tools", "vision", "json"]

[[models]]
slug = "mock/embed"
provider = "mock"
upstream_model = "embed-upstream"
context_length = 8192
input_per_mtok = 0.02
output_per_mtok = 0
endpoints = ["embeddings"]

[[models]]
slug = "google/embed"
provider = "gem"
upstream_model = "text-embedding-004"
context_length = 2048
input_per_mtok = 0.15
output_per_mtok = 0
endpoints = ["embeddings"]

[[models]]
slug = "anthropic/claude-embed"
provider = "claude"
upstream_model = "claude-embed"
context_length = 2048
input_per_mtok = 0.15
output_per_mtok = 0
endpoints = ["embeddings"]

[[models]]
slug = "mock/image"
provider = "mock"
upstream_model = "image-upstream"
context_length = 4000
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["images"]
image_prices = {{ "1024x1024" = 0.04, "1792x1024" = 0.08 }}

[[models]]
slug = "mock/tts"
provider = "mock"
upstream_model = "tts-upstream"
context_length = 4096
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["speech"]
input_per_mchar = 15.0

[[models]]
slug = "mock/whisper"
provider = "mock"
upstream_model = "whisper-upstream"
context_length = 4096
input_per_mtok = 0
output_per_mtok = 0
endpoints = ["transcriptions"]
audio_per_minute = 0.006

[[models]]
slug = "dead/model"
provider = "dead"
upstream_model = "x"
context_length = 1000
input_per_mtok = 1
output_per_mtok = 1
"""
        )
        env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=ADMIN, SDK_PROVIDER_KEY=PROVIDER_KEY, RUST_LOG="warn")
        self.procs.append(
            subprocess.Popen(
                [BIN, "serve", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(self.dir / "stderr.log", "wb"),
            )
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(self.base + "/readyz")

    def account(self, credit_usd="5"):
        acct = admin(self.base, "/v1/admin/accounts", {"email": f"sdk{time.time_ns()}@example.com"})
        if credit_usd != "0":
            admin(self.base, f"/v1/admin/accounts/{acct['id']}/credits", {"amount_usd": credit_usd})
        key = admin(self.base, f"/v1/admin/accounts/{acct['id']}/keys", {"name": "sdk"})
        return key["key"]

    def get(self, path, key, timeout=5):
        """GET a gateway route with an API key: (status, parsed JSON body)."""
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def generation(self, key, gen_id, timeout=5.0):
        """`GET /v1/generation?id=`, polled until the record is committed (charges are
        group-committed, so it may lag the response by a batch)."""
        deadline = time.time() + timeout
        while True:
            status, body = self.get(f"/v1/generation?id={gen_id}", key)
            if status == 200:
                return body["data"]
            if time.time() > deadline:
                raise AssertionError(f"generation {gen_id} not found within {timeout}s: {status} {body}")
            time.sleep(0.02)

    def mock_requests(self):
        """What the mock upstream received (oldest first)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mock_port}/_mock/requests", timeout=5) as r:
            return json.loads(r.read()).get("requests", [])

    def mock_clear(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.mock_port}/_mock/requests", method="DELETE")
        urllib.request.urlopen(req, timeout=5).close()

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait(timeout=10)
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack():
    s = Stack.__new__(Stack)
    s.procs = []
    try:
        s.__init__()
        yield s
    finally:
        s.close()


@pytest.fixture
def key(stack):
    return stack.account()


@pytest.fixture
def client(stack, key):
    """The official SDK on a fresh funded account: no retries, every call bounded."""
    from openai import OpenAI

    return OpenAI(api_key=key, base_url=stack.base + "/v1", max_retries=0, timeout=20)
