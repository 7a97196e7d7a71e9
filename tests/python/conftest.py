"""Fixtures: the real gateway and mock upstream on random loopback ports, for the official
OpenAI SDK to drive. Processes are killed at the end of the session; every wait is bounded."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("TOLLGATE_BIN", str(ROOT / "target" / "debug" / "tollgate"))
ADMIN = "sdk-admin-token-0123456789"
PROVIDER_KEY = "sdk-provider-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
