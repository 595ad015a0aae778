"""Whether a multi-node torchrun line may be launched, and the run id it gets.

The trust boundary of a torchrun job is the network: torch's TCPStore listens on every
interface of the rendezvous host, lists its keys (the run id among them) to any client, and
the c10d rendezvous unpickles the state it reads there, so whoever reaches the rendezvous
port can run code in the launchers. What a launcher can check, it checks before starting:

- the rendezvous endpoint (``--rdzv-endpoint``) resolves to loopback or private addresses
  only, so the nodes meet over the private network (``SEQ2SEQ_RDZV_ALLOW_PUBLIC=1``
  overrides, e.g. for a cloud network whose public addresses a firewall closes);
- the run id is not guessable (32+ hex digits, as ``secrets.token_hex(16)`` prints) and
  comes from ``SEQ2SEQ_RDZV_ID``, shared out of band; it reaches torchrun as
  ``PET_RDZV_ID`` in its environment (torchrun reads every option from ``PET_<NAME>``),
  never on a command line or in a log. It keeps apart jobs that share an endpoint and
  refuses stale or mistaken launchers; it is not an access control (see above).

``--standalone`` and single-node lines are launched as before: their rendezvous is on
127.0.0.1 with a random port and run id.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

RDZV_ID_ENV = "SEQ2SEQ_RDZV_ID"
ALLOW_PUBLIC_ENV = "SEQ2SEQ_RDZV_ALLOW_PUBLIC"
TORCHRUN_RDZV_ID_ENV = "PET_RDZV_ID"  # torchrun's own: the env form of --rdzv-id
HOW_TO_MAKE_ID = "python -c 'import secrets; print(secrets.token_hex(16))'"
_RUN_ID = re.compile(r"[0-9a-f]{32,128}")
_MIN_DISTINCT = 8  # a random 32-digit hex id has ~14 distinct digits; "0000…" has 1


class RendezvousRefused(ValueError):
    """The torchrun line is not launched; the message says what to change."""


@dataclass(frozen=True)
class TorchrunOptions:
    """The rendezvous part of a ``SEQ2SEQ_TORCHRUN`` line (the rest is torchrun's business)."""

    standalone: bool = False
    max_nodes: int = 1
    backend: str = "static"  # torchrun's default
    endpoint: str = ""
    run_id_given: bool = False


_VALUED = {"nnodes", "rdzv_backend", "rdzv_endpoint", "rdzv_id"}


def parse_options(args: Sequence[str]) -> TorchrunOptions:
    """``--opt value`` and ``--opt=value``, with ``-`` or ``_`` inside names (torchrun
    takes both). ``--nnodes`` is ``N`` or ``MIN:MAX``."""
    found: dict[str, str] = {}
    standalone = False
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name == "standalone":
            standalone = True
        elif name in _VALUED:
            if not eq:
                value = args[i] if i < len(args) else ""
                i += 1
            found[name] = value
    nnodes = found.get("nnodes", "1")
    try:
        max_nodes = int(nnodes.rpartition(":")[2])
    except ValueError:
        raise RendezvousRefused(f"--nnodes {nnodes!r}: expected N or MIN:MAX") from None
    return TorchrunOptions(
        standalone=standalone,
        max_nodes=max_nodes,
        backend=found.get("rdzv_backend", "static"),
        endpoint=found.get("rdzv_endpoint", ""),
        run_id_given="rdzv_id" in found,
    )


def check_run_id(run_id: str) -> None:
    """Refuse an id that could be guessed or mistyped into another job's: 32 to 128
    lowercase hex digits, not a run of a few digits."""
    if not _RUN_ID.fullmatch(run_id) or len(set(run_id)) < _MIN_DISTINCT:
        raise RendezvousRefused(
            f"{RDZV_ID_ENV} must be 32+ random hex digits, shared by the nodes out of band: "
            f"export {RDZV_ID_ENV}=$({HOW_TO_MAKE_ID})"
        )


def endpoint_host(endpoint: str) -> str:
    """The host of ``HOST[:PORT]`` (``[v6]:PORT`` for IPv6)."""
    if endpoint.startswith("["):
        return endpoint[1:].partition("]")[0]
    if endpoint.count(":") > 1:  # a bare IPv6 address
        return endpoint
    return endpoint.partition(":")[0]


def address_is_private(address: str) -> bool:
    """Loopback, or a private-use range (10/8, 172.16/12, 192.168/16, fc00::/7); not the
    unspecified address (which Python counts as private), not link-local."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if ip.is_unspecified or ip.is_link_local:
        return False
    return ip.is_loopback or ip.is_private


def check_endpoint(endpoint: str, addresses: Sequence[str], allow_public: bool) -> None:
    """Refuse a missing endpoint, or one with any non-private address, unless allowed."""
    if not endpoint:
        raise RendezvousRefused(
            "a multi-node run needs --rdzv-endpoint HOST:PORT on the nodes' private network"
        )
    if allow_public:
        return
    host = endpoint_host(endpoint)
    if not addresses:
        raise RendezvousRefused(f"--rdzv-endpoint {host}: the host does not resolve")
    public = sorted({a for a in addresses if not address_is_private(a)})
    if public:
        raise RendezvousRefused(
            f"--rdzv-endpoint {host} resolves to {', '.join(public)}, not a private or "
            f"loopback address: anyone who reaches the rendezvous port can run code in the "
            f"launchers. Use the private interface's address, or set {ALLOW_PUBLIC_ENV}=1 "
            f"if a firewall admits only the nodes"
        )


def resolve(endpoint: str) -> list[str]:
    """Every address the endpoint's host resolves to ([] when it does not)."""
    host = endpoint_host(endpoint)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def launch_env(
    args: Sequence[str],
    env: Mapping[str, str],
    resolver: Callable[[str], list[str]] = resolve,
) -> dict[str, str]:
    """The variables to add to torchrun's environment for ``args`` (a multi-node run: its
    run id as ``PET_RDZV_ID``), or ``RendezvousRefused`` saying what to change."""
    options = parse_options(args)
    if options.standalone or options.max_nodes <= 1:
        return {}
    if options.backend != "c10d":
        raise RendezvousRefused(
            f"a multi-node run uses --rdzv-backend c10d (got {options.backend!r})"
        )
    if options.run_id_given:
        raise RendezvousRefused(
            f"--rdzv-id on a command line is visible to `ps` and logs: "
            f"give it in {RDZV_ID_ENV} instead"
        )
    run_id = env.get(RDZV_ID_ENV, "").strip()
    check_run_id(run_id)
    allow_public = env.get(ALLOW_PUBLIC_ENV, "").strip().lower() in ("1", "true", "yes")
    addresses = [] if allow_public else resolver(options.endpoint)
    check_endpoint(options.endpoint, addresses, allow_public)
    return {TORCHRUN_RDZV_ID_ENV: run_id}
