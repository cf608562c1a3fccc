"""Who may talk to the server: loopback by default, CURVE keys or an explicit --insecure otherwise.

ZeroMQ's CURVE mechanism (RFC 26, http://rfc.zeromq.org/spec:26/CURVEZMQ) encrypts and
authenticates a connection with Curve25519 keys; a client that does not know the server's public
key, or whose own public key is not in the authorized directory, never completes the handshake
and so never gets a reply. Keys are ZeroMQ certificate files as written by
``zmq.auth.create_certificates`` (``NAME.key`` public, ``NAME.key_secret`` secret).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator


class LinkSecurityError(ValueError):
    """A bind that would expose the controller, or unusable CURVE keys."""


class CurveKeys(BaseModel):
    """The server's CURVE certificate and the clients it accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server_secret_file: Path = Field(
        description="The server's secret certificate (NAME.key_secret from "
        "zmq.auth.create_certificates); its public half goes to the robots."
    )
    authorized_dir: Path | None = Field(
        default=None,
        description="Directory of the public certificates (*.key) of the robots allowed in; "
        "None: any client that knows the server's public key.",
    )


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (127.0.0.0/8, ::1,
    localhost): endpoints no other machine can reach."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: possibly reachable
        return False


def check_bind(endpoint: str, curve_keys: CurveKeys | None, insecure: bool) -> None:
    """Refuse to bind a network-reachable endpoint without CURVE keys or ``insecure``."""
    if "://" not in endpoint:
        raise LinkSecurityError(
            f"bind address {endpoint!r} needs a transport, e.g. tcp://127.0.0.1:5555"
        )
    if is_local_endpoint(endpoint) or curve_keys is not None or insecure:
        return
    raise LinkSecurityError(
        f"binding {endpoint} would let any machine on the network command the robot. Bind a "
        "loopback address (tcp://127.0.0.1:PORT), or give CURVE keys (--curve-secret-key "
        "server.key_secret [--curve-authorized DIR]; make them with "
        "zmq.auth.create_certificates, see docs/protocol.md 'Security'), or pass --insecure "
        "on a network you trust."
    )


def make_curve_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    return Path(public), Path(secret)


def load_public_key(certificate: str | Path) -> bytes:
    """The Z85 public key in a certificate file (either half of a pair)."""
    public, _ = zmq.auth.load_certificate(certificate)
    return public


def load_key_pair(secret_certificate: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a ``*.key_secret`` certificate file."""
    path = Path(secret_certificate)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise LinkSecurityError(f"cannot read CURVE certificate {path}: {error}") from error
    if secret is None:
        raise LinkSecurityError(
            f"{path} holds only a public key; give the NAME.key_secret file of the pair"
        )
    return public, secret


def secure_server_socket(
    context: zmq.Context[zmq.Socket[bytes]], socket: zmq.Socket[bytes], keys: CurveKeys
) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server (before bind) and start the context's authenticator,
    which the caller stops when the socket closes."""
    public, secret = load_key_pair(keys.server_secret_file)
    if keys.authorized_dir is not None and not Path(keys.authorized_dir).is_dir():
        raise LinkSecurityError(f"authorized keys directory {keys.authorized_dir} does not exist")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    location = zmq.auth.CURVE_ALLOW_ANY if keys.authorized_dir is None else keys.authorized_dir
    authenticator.configure_curve(domain="*", location=location)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return authenticator
