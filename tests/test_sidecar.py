"""Sidecar operations: health, reflection, metrics, access control, configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.support.daemon import Daemon, DaemonStarter
from turnstore import (
    AgentEventEnvelope,
    ClientTls,
    InvalidArgumentError,
    TurnstoreClient,
    UnauthenticatedError,
    UnavailableError,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


async def test_health_is_serving_then_not_serving_during_shutdown(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(data_dir=data_dir)
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "turnstore.v1.EventStoreService", "turnstore.v1.AdminService"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == SERVING, service
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert (await watch.read()).status == NOT_SERVING
    assert daemon.wait_exit() == 0


def test_reflection_lists_the_services(daemon: Daemon) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {
        "turnstore.v1.EventStoreService",
        "turnstore.v1.HistoryStoreService",
        "turnstore.v1.AdminService",
        "grpc.health.v1.Health",
    } <= set(services)


def test_the_health_command_answers_for_probes(daemon: Daemon, tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "turnstore", "health", "--target", daemon.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    down = subprocess.run(
        [sys.executable, "-m", "turnstore", "health", "--target", f"unix:{tmp_path}/none.sock"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "UnavailableError" in down.stderr


async def test_metrics_count_rpcs_commits_and_followers(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", "--metrics-listen", "127.0.0.1:0", data_dir=data_dir)
    first = daemon.serving
    host, port = first["metrics"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    # Unary appends: each is one Append RPC in the per-method counters.
    async with TurnstoreClient(daemon.target, write_mode="unary") as client:
        await client.events.append("t", 1, delta("a"))
        with pytest.raises(InvalidArgumentError):
            await client.events.append("x" * 300, 1, delta("a"))
        replay = client.events.replay("t", follow=True)
        async for _ in replay:
            break
        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://{first['metrics']}/metrics", timeout=30)
                .read()
                .decode()
            )
        )
        await replay.aclose()
    method = '{method="/turnstore.v1.EventStoreService/Append"}'
    assert f"turnstore_rpc_calls_total{method} 2.0" in text
    assert f"turnstore_rpc_failures_total{method} 1.0" in text
    assert f"turnstore_rpc_seconds_count{method} 2.0" in text
    assert "turnstore_commit_writes_count 1.0" in text
    assert "turnstore_commit_seconds_bucket" in text
    assert "turnstore_open_replays 1.0" in text
    assert "turnstore_database_bytes " in text
    assert daemon.stop() == 0


async def test_a_token_is_required_on_every_call_but_health(
    data_dir: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    daemon = start_daemon("lmdb", "--auth-token-file", str(token_file), data_dir=data_dir)
    for token in (None, "wrong-token"):
        async with TurnstoreClient(daemon.target, token=token, retry=None) as client:
            with pytest.raises(UnauthenticatedError, match="bearer token"):
                await client.events.append("t", 1, delta("no"))
            with pytest.raises(UnauthenticatedError):
                async for _ in client.events.replay("t"):
                    pass
            with pytest.raises(UnauthenticatedError):
                await client.history("k").load()
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert response.status == SERVING
    async with TurnstoreClient(daemon.target, token="s3cret-token") as client:
        assert await client.events.append("t", 1, delta("yes")) == 0
        async with client.events.appender() as appender:
            assert await appender.append("t", 1, delta("streamed")) == 1
        assert [
            item.position async for item in client.events.replay("t") if hasattr(item, "position")
        ] == [0, 1]
    assert daemon.stop() == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _pem(tmp_path: Path, name: str, blob: trustme.Blob) -> Path:
    path = tmp_path / name
    blob.write_to_path(str(path))
    return path


async def test_tls_and_mutual_tls(
    data_dir: Path, tmp_path: Path, ca: trustme.CA, start_daemon: DaemonStarter
) -> None:
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    cert = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    key = _pem(tmp_path, "server.key", server_cert.private_key_pem)
    ca_file = _pem(tmp_path, "ca.pem", ca.cert_pem)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    daemon = start_daemon("lmdb", *args, data_dir=data_dir, listen=["127.0.0.1:0"])
    async with TurnstoreClient(daemon.target, tls=ClientTls(ca_file)) as client:
        assert await client.events.append("t", 1, delta("over tls")) == 0
    # The CA as a str path, or as PEM bytes, works the same.
    for ca_source in (str(ca_file), ca.cert_pem.bytes()):
        async with TurnstoreClient(daemon.target, tls=ClientTls(ca_source)) as client:
            assert await client.events.event_count("t") == 1
    async with TurnstoreClient(daemon.target, retry=None, timeout=5) as plain:
        with pytest.raises(UnavailableError):
            await plain.events.event_count("t")
    assert daemon.stop() == 0

    client_cert = ca.issue_cert("agent.example")
    client_chain = tmp_path / "client.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(client_chain))
    client_key = _pem(tmp_path, "client.key", client_cert.private_key_pem)
    mutual = start_daemon(
        "lmdb", *args, "--tls-client-ca", str(ca_file), data_dir=data_dir, listen=["127.0.0.1:0"]
    )
    with_cert = ClientTls(ca_file, cert=client_chain, key=client_key)
    async with TurnstoreClient(mutual.target, tls=with_cert) as client:
        assert await client.events.event_count("t") == 1
    async with TurnstoreClient(mutual.target, tls=ClientTls(ca_file), retry=None) as client:
        with pytest.raises(UnavailableError):
            await client.events.event_count("t")
    assert mutual.stop() == 0


def test_unix_sockets_are_owner_only_unless_configured(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    for extra, mode in (([], 0o600), (["--socket-mode", "660"], 0o660)):
        socket = tmp_path / f"s{mode:o}.sock"
        daemon = start_daemon(
            "lmdb", *extra, data_dir=tmp_path / f"data{mode:o}", listen=[f"unix:{socket}"]
        )
        assert stat.S_IMODE(os.stat(socket).st_mode) == mode
        assert daemon.stop() == 0


async def test_every_flag_can_come_from_the_environment(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    help_run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "turnstore", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    help_text = help_run.stdout
    flags = [
        word
        for word in help_text.split()
        if word.startswith("--") and word not in ("--help", "--version")
    ]
    flags = sorted({flag.rstrip(",") for flag in flags if flag[2:3].isalpha()})
    assert len(flags) >= 15
    for flag in flags:
        variable = "TURNSTORE_" + flag[2:].upper().replace("-", "_")
        assert variable in help_text, flag
    os.environ["TURNSTORE_MAX_EVENT_BYTES"] = "300"
    try:
        daemon = start_daemon(data_dir=data_dir)
    finally:
        del os.environ["TURNSTORE_MAX_EVENT_BYTES"]
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(InvalidArgumentError, match="limit of 300"):
            await client.events.append("t", 1, delta("x" * 400))
    assert daemon.stop() == 0


async def test_the_token_can_come_from_the_environment(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    os.environ["TURNSTORE_AUTH_TOKEN"] = "from-the-env"
    try:
        daemon = start_daemon(data_dir=data_dir)
    finally:
        del os.environ["TURNSTORE_AUTH_TOKEN"]
    async with TurnstoreClient(daemon.target, retry=None) as client:
        with pytest.raises(UnauthenticatedError):
            await client.events.event_count("t")
    async with TurnstoreClient(daemon.target, token="from-the-env") as client:
        assert await client.events.event_count("t") == 0
    assert daemon.stop() == 0
