"""`mtagent certs init`, `issue`, `renew` and `revoke`: the CA, server and client certificates,
and the revocation list."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from agent import certs


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
        type=_client_name,
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
        "--name", type=_client_name, metavar="N", help="renew client N's certificate instead"
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
        "--name", required=True, type=_client_name, metavar="N", help="the client to revoke"
    )
    revoke.set_defaults(run=run_revoke)


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
    done = certs.revoke_client(args.dir, args.name)
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


def _hostname(text: str) -> str:
    try:
        certs.parse_hostname(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _client_name(text: str) -> str:
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
