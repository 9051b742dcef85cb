"""What the client refuses before it sends anything: bad targets and TLS settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.daemon import Daemon
from turnstore import ClientTls, InvalidArgumentError, TurnstoreClient


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("http://127.0.0.1:7070", "take no http:// scheme"),
        ("https://localhost:7070", "take no https:// scheme"),
        ("127.0.0.1", "has no port"),
        ("::1", "has no port"),
        ("127.0.0.1:70700", "from 1 to 65535"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("localhost:http", "from 1 to 65535"),
        ("unix:", "needs a socket path"),
    ],
)
async def test_a_bad_target_is_refused_before_any_call(target: str, says: str) -> None:
    with pytest.raises(InvalidArgumentError, match=says) as raised:
        TurnstoreClient(target)
    assert "HOST:PORT" in str(raised.value) or "unix:" in str(raised.value)


@pytest.mark.parametrize(
    "target", ["127.0.0.1:7070", "127.0.0.2:7070", "[::1]:7070", "localhost:1", "unix:/x.sock"]
)
async def test_good_targets_are_accepted(target: str) -> None:
    client = TurnstoreClient(target)
    assert client.target == target
    await client.aclose()


@pytest.mark.parametrize("target", ["10.1.2.3:7070", "example.com:7070", "[2001:db8::1]:7070"])
async def test_a_target_that_is_not_loopback_needs_tls_or_allow_remote(target: str) -> None:
    """The rule of every client (docs/clients.md): no insecure channel off the host by default."""
    with pytest.raises(InvalidArgumentError, match="not a loopback address") as raised:
        TurnstoreClient(target)
    assert "allow_remote" in str(raised.value)
    opted_in = TurnstoreClient(target, allow_remote=True)
    await opted_in.aclose()
    secure = TurnstoreClient(target, tls=ClientTls(b"-----BEGIN CERTIFICATE-----\n"))
    await secure.aclose()


def test_the_command_line_refuses_a_remote_target_without_tls_and_names_the_opt_in() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turnstore", "stats", "--target", "10.1.2.3:7070"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result  # bad usage: nothing was sent
    assert "not a loopback address" in result.stderr and "--allow-remote" in result.stderr


async def test_a_checked_target_still_reaches_the_daemon(daemon: Daemon) -> None:
    async with TurnstoreClient(daemon.target) as client:
        assert await client.events.event_count("nobody") == 0


def test_client_tls_needs_cert_and_key_together_and_pem_bytes() -> None:
    with pytest.raises(ValueError, match="cert and key go together"):
        ClientTls(b"-----BEGIN CERTIFICATE-----", cert="client.pem")
    with pytest.raises(ValueError, match="PEM data"):
        ClientTls(b"not pem").credentials()
    with pytest.raises(FileNotFoundError):
        ClientTls("/nonexistent/ca.pem").credentials()
