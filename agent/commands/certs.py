"""`mtagent certs init`, `issue`, `renew`, `revoke` and `passphrase`: the CA, server and client
certificates, the revocation list, and one-time passphrases to enroll process servers with."""

from __future__ import annotations

import argparse
import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent import certs, enrollment
from agent.config import ALL_GROUPS, ID_PATTERN, SENDER_ROLES, load_config
from agent.errors import CommandFailed
from agent.units import InvalidValue, parse_duration

DEFAULT_PASSPHRASE_TTL = "24h"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `certs` command, with its `init` and `issue` subcommands, to `subparsers`."""
    parser = subparsers.add_parser(
        "certs",
        help="make the CA, the server certificate and client certificates for mutual TLS",
        description="Make the certificates for mutual TLS between process servers and this agent.",
    )
    actions = parser.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="write a new CA and server certificate: ca.crt, ca.key, server.crt, server.key",
        description=(
            "Write a new CA (10 years) and a server certificate signed by it in DIR: ca.crt, "
            "ca.key, server.crt, server.key. Keys are ECDSA P-256, mode 0600. The server "
            "certificate names exactly the --hostname values given, nothing implicit."
        ),
    )
    init.add_argument("--dir", required=True, type=Path, help="directory to write into")
    init.add_argument(
        "--hostname",
        required=True,
        action="append",
        type=_hostname,
        dest="hostnames",
        metavar="H",
        help="a DNS name or IP address the process servers connect to (repeat for several)",
    )
    init.add_argument(
        "--days",
        type=_days,
        default=certs.LEAF_DAYS,
        help=f"validity of the server certificate in days (default {certs.LEAF_DAYS})",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace existing files (a new CA: every client certificate must be issued again)",
    )
    init.set_defaults(run=run_init)

    issue = actions.add_parser(
        "issue",
        help="write a client certificate N.crt, N.key for a process server, signed by DIR's CA",
        description=(
            "Write N.crt and N.key in DIR: a client certificate (clientAuth, CN=N) for one "
            "process server, signed by the CA in DIR (made by `mtagent certs init`)."
        ),
    )
    issue.add_argument("--dir", required=True, type=Path, help="directory holding ca.crt, ca.key")
    issue.add_argument(
        "--name",
        required=True,
        type=client_name_argument,
        metavar="N",
        help="the client's name, e.g. ps1 or ps1.example.com; also its file names",
    )
    issue.add_argument(
        "--days",
        type=_days,
        default=certs.LEAF_DAYS,
        help=f"validity in days (default {certs.LEAF_DAYS})",
    )
    issue.add_argument("--force", action="store_true", help="replace existing files")
    issue.set_defaults(run=run_issue)

    renew = actions.add_parser(
        "renew",
        help="replace the server certificate (or client N's) with a new key and certificate",
        description=(
            "Write a new key and certificate for the server (server.crt, server.key: the same "
            "names) or, with --name, for client N (N.crt, N.key), signed by DIR's CA, in place "
            "of the old ones. Restart the agent (or reload it) to serve the new server "
            "certificate; give a client's new files to its process server."
        ),
    )
    renew.add_argument("--dir", required=True, type=Path, help="directory holding ca.crt, ca.key")
    renew.add_argument(
        "--name",
        type=client_name_argument,
        metavar="N",
        help="renew client N's certificate instead",
    )
    renew.add_argument(
        "--days",
        type=_days,
        default=certs.LEAF_DAYS,
        help=f"validity in days (default {certs.LEAF_DAYS})",
    )
    renew.set_defaults(run=run_renew)
    revoke = actions.add_parser(
        "revoke",
        help="add client certificate N.crt to DIR's certificate revocation list, crl.pem",
        description=(
            "Add N.crt of DIR to crl.pem in DIR, the revocation list signed by DIR's CA (made "
            "if missing). An agent whose [tls] crl names that file refuses the certificate's "
            "handshakes from its next start or reload (SIGHUP)."
        ),
    )
    revoke.add_argument("--dir", required=True, type=Path, help="directory holding ca.crt, ca.key")
    revoke.add_argument(
        "--name", required=True, type=client_name_argument, metavar="N", help="the client to revoke"
    )
    revoke.add_argument(
        "--cert",
        type=Path,
        metavar="PATH",
        help="its certificate, when not DIR/N.crt (a sender enrolled by passphrase: "
        "<state_dir>/enrolled/N.crt)",
    )
    revoke.set_defaults(run=run_revoke)

    passphrase = actions.add_parser(
        "passphrase",
        help="print a one-time passphrase that enrolls a process server into some groups",
        description=(
            "Print a one-time passphrase with which `mtagent enroll` on a process server gets a "
            "client certificate for GROUPS (its key never leaves the process server), and the "
            "SHA-256 fingerprint of the agent's server certificate, which the process server "
            "checks on first contact. Only a verifier is kept, in the agent's state directory; "
            "the agent needs [tls] enrollment_ca_key and a [[senders]] table."
        ),
    )
    passphrase.add_argument(
        "--config", required=True, type=Path, help="the agent's configuration file"
    )
    passphrase.add_argument(
        "--groups",
        required=True,
        type=_groups,
        metavar="G1,G2",
        help=f'the consistency groups it may reach, comma-separated ("{ALL_GROUPS}": every one)',
    )
    passphrase.add_argument(
        "--role", choices=SENDER_ROLES, default="replicate", help="its role (default replicate)"
    )
    passphrase.add_argument(
        "--ttl",
        type=_ttl,
        default=parse_duration(DEFAULT_PASSPHRASE_TTL),
        metavar="DURATION",
        help=f"how long the passphrase works, like 1h or 2d (default {DEFAULT_PASSPHRASE_TTL})",
    )
    passphrase.set_defaults(run=run_passphrase)


def run_init(args: argparse.Namespace) -> int:
    """Write the CA and server files and list them. Raises PkiError (exit code 1)."""
    paths = certs.init_pki(args.dir, args.hostnames, args.days, force=args.force)
    ca = _load(paths.ca_cert)
    server = _load(paths.server_cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    _print_block(
        [
            (paths.ca_cert, f"CA certificate, valid until {_until(ca)}"),
            (paths.ca_key, "CA private key, mode 0600: keep it off the network"),
            (
                paths.server_cert,
                f"server certificate for {', '.join(str(n.value) for n in names)}, "
                f"valid until {_until(server)}",
            ),
            (paths.server_key, "server private key, mode 0600"),
        ]
    )
    return 0


def run_issue(args: argparse.Namespace) -> int:
    """Write one client's files and list them. Raises PkiError (exit code 1)."""
    cert_path, key_path = certs.issue_client(args.dir, args.name, args.days, force=args.force)
    client = _load(cert_path)
    _print_block(
        [
            (cert_path, f"client certificate for {args.name}, valid until {_until(client)}"),
            (key_path, "client private key, mode 0600"),
        ]
    )
    # What it may do lives in the agent's configuration alone (one source of truth, changed
    # without reissuing): say what to add there.
    print(
        "\nlet it in: add to the agent's configuration, with the groups it replicates\n"
        f'  [[senders]]\n  name = "{args.name}"\n  groups = ["vm1"]\n  role = "replicate"'
    )
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke one client's certificate and say what the CRL holds. Raises PkiError (exit 1)."""
    done = certs.revoke_client(args.dir, args.name, args.cert)
    state = "was already revoked" if done.already else "revoked"
    print(
        f"{args.name} (serial {done.serial:x}) {state}: {done.crl} lists "
        f"{done.revoked_count} certificate(s)\n"
        f"the agent refuses it once [tls] crl names {done.crl} and it starts or reloads "
        "(systemctl reload mtagent)"
    )
    return 0


def run_renew(args: argparse.Namespace) -> int:
    """Renew the server's (or one client's) files and list them. Raises PkiError (exit 1)."""
    if args.name is None:
        cert_path, key_path = certs.renew_server(args.dir, args.days)
        what = "server certificate"
    else:
        if not (args.dir / f"{args.name}.crt").exists():
            raise certs.PkiError(args.dir / f"{args.name}.crt", "no certificate to renew here")
        cert_path, key_path = certs.issue_client(args.dir, args.name, args.days, force=True)
        what = f"client certificate for {args.name}"
    renewed = _load(cert_path)
    _print_block(
        [
            (cert_path, f"{what}, valid until {_until(renewed)}"),
            (key_path, "its new private key, mode 0600"),
        ]
    )
    return 0


def run_passphrase(args: argparse.Namespace) -> int:
    """Make a passphrase and print it with what the process server needs. Raises ConfigError,
    PkiError, CommandFailed, EnrollmentStoreError (exit code 1)."""
    config = load_config(args.config)
    if config.senders is None:
        raise CommandFailed(
            f"{config.file} has no [[senders]] table: every certificate may do everything there, "
            "so an enrollment could bind no groups; add one first (README, Security)"
        )
    if config.tls.enrollment_ca_key is None:
        raise CommandFailed(
            f"{config.file} has no [tls] enrollment_ca_key: the agent could not sign the "
            "certificate; name the CA key of [tls] client_ca there"
        )
    certs.load_ca_files(config.tls.client_ca, config.tls.enrollment_ca_key, "see [tls]")
    try:
        server = x509.load_pem_x509_certificate(config.tls.cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise CommandFailed(f"cannot read the server certificate {config.tls.cert}: {exc}") from exc
    fingerprint = hashlib.sha256(server.public_bytes(serialization.Encoding.DER)).hexdigest()
    made, verifier = enrollment.add_passphrase(
        config.server.state_dir, args.groups, args.role, args.ttl
    )
    host = config.server.listen_host
    host = "THIS-HOST" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    until = datetime.fromtimestamp(verifier.expires_ns / 1e9, UTC)
    print(
        f"passphrase:  {made}\n"
        f"             works once, until {until:%Y-%m-%d %H:%M} UTC, for groups "
        f"{', '.join(sorted(args.groups))} with role {args.role}\n"
        f"fingerprint: {fingerprint}  (SHA-256 of {config.tls.cert})\n"
        "\non the process server (NAME: its name, like ps01):\n"
        f"  mtagent enroll --server https://{host}:{config.server.listen_port} "
        f"--passphrase {made} --name NAME --fingerprint {fingerprint} --out /etc/mtagent/tls"
    )
    return 0


def _groups(text: str) -> frozenset[str]:
    groups = frozenset(part.strip() for part in text.split(","))
    for group in groups:
        if group != ALL_GROUPS and ID_PATTERN.fullmatch(group) is None:
            raise argparse.ArgumentTypeError(
                f"expected consistency groups separated by commas (like vm1,vm2), got {text!r}"
            )
    return groups


def _ttl(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(f"expected {exc.expected}, got {exc.got}") from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration above zero, got {text!r}")
    return seconds


def _hostname(text: str) -> str:
    try:
        certs.parse_hostname(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def client_name_argument(text: str) -> str:
    """A client certificate's name (certs.check_client_name). For argparse."""
    try:
        return certs.check_client_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if days <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of days, got {text!r}")
    return days


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _until(cert: x509.Certificate) -> str:
    return f"{cert.not_valid_after_utc:%Y-%m-%d}"


def _print_block(rows: list[tuple[Path, str]]) -> None:
    width = max(len(str(path)) for path, _ in rows)
    print("wrote:")
    for path, what in rows:
        print(f"  {path!s:<{width}}  {what}")
