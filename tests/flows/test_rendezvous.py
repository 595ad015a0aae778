"""flows.rendezvous: which torchrun lines `seq2seq train` launches, and how the run id
travels (torchrun's environment, never its command line)."""

from __future__ import annotations

import shlex

import pytest

from flows.rendezvous import (
    TORCHRUN_RDZV_ID_ENV,
    RendezvousRefused,
    address_is_private,
    check_run_id,
    endpoint_host,
    launch_env,
    parse_options,
)

RUN_ID = "3f9c2a7be01d48c6a5f7e2b9d4c81a06"  # the shape secrets.token_hex(16) prints
MULTI = "--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint {}:29500"
HOSTS = {"node0.internal": ["10.0.0.10"], "example.org": ["93.184.215.14", "10.0.0.9"]}


def _resolver(endpoint: str) -> list[str]:
    return HOSTS.get(endpoint_host(endpoint), [endpoint_host(endpoint)])


def _env(args: str, **env: str) -> dict[str, str]:
    return launch_env(shlex.split(args), env, resolver=_resolver)


def test_options_are_read_in_every_spelling() -> None:
    opts = parse_options(shlex.split("--nnodes=1:3 --rdzv_backend c10d --rdzv-endpoint=h:1"))
    assert (opts.max_nodes, opts.backend, opts.endpoint) == (3, "c10d", "h:1")
    assert not opts.run_id_given
    assert parse_options(["--standalone", "--nproc-per-node", "2"]).standalone
    assert parse_options(["--rdzv_id=x"]).run_id_given
    assert parse_options([]) == parse_options(["--nproc-per-node", "8"])  # one node, static
    with pytest.raises(RendezvousRefused, match="--nnodes 'two'"):
        parse_options(["--nnodes", "two"])


def test_one_machine_launches_as_before() -> None:
    assert _env("--standalone --nproc-per-node 4") == {}
    assert _env("--nnodes 1 --nproc-per-node 2") == {}  # torchrun's static 127.0.0.1


def test_multi_node_gets_its_run_id_in_torchrun_environment() -> None:
    for host in ("node0.internal", "10.1.2.3", "192.168.7.1", "127.0.0.1", "[fd00::5]"):
        assert _env(MULTI.format(host), SEQ2SEQ_RDZV_ID=RUN_ID) == {TORCHRUN_RDZV_ID_ENV: RUN_ID}


@pytest.mark.parametrize(
    ("args", "env", "reason"),
    [
        (MULTI.format("10.0.0.10"), {"SEQ2SEQ_RDZV_ID": ""}, "SEQ2SEQ_RDZV_ID must be 32"),
        (MULTI.format("10.0.0.10"), {"SEQ2SEQ_RDZV_ID": "nightly-2026-12-03"}, "32\\+ random"),
        (MULTI.format("10.0.0.10"), {"SEQ2SEQ_RDZV_ID": "0" * 32}, "32\\+ random"),
        (MULTI.format("10.0.0.10") + " --rdzv-id " + RUN_ID, {}, "visible to `ps`"),
        ("--nnodes 2 --nproc-per-node 1", {}, "uses --rdzv-backend c10d \\(got 'static'\\)"),
        ("--nnodes 2 --rdzv-backend c10d", {}, "needs --rdzv-endpoint HOST:PORT"),
        (MULTI.format("0.0.0.0"), {}, "resolves to 0.0.0.0, not a private"),
        (MULTI.format("8.8.8.8"), {}, "resolves to 8.8.8.8, not a private"),
        (MULTI.format("example.org"), {}, "resolves to 93.184.215.14, not a private"),
        (MULTI.format("169.254.1.1"), {}, "resolves to 169.254.1.1"),
        (MULTI.format("[2606:4700::1111]"), {}, "resolves to 2606:4700::1111"),
    ],
)
def test_multi_node_refusals_say_what_to_change(args: str, env: dict, reason: str) -> None:
    env = {"SEQ2SEQ_RDZV_ID": RUN_ID, **env}
    with pytest.raises(RendezvousRefused, match=reason):
        _env(args, **env)


def test_public_endpoint_needs_the_explicit_override() -> None:
    args = MULTI.format("8.8.8.8")
    for on in ("1", "true", "yes"):
        got = _env(args, SEQ2SEQ_RDZV_ID=RUN_ID, SEQ2SEQ_RDZV_ALLOW_PUBLIC=on)
        assert got == {TORCHRUN_RDZV_ID_ENV: RUN_ID}
    with pytest.raises(RendezvousRefused, match="not a private"):
        _env(args, SEQ2SEQ_RDZV_ID=RUN_ID, SEQ2SEQ_RDZV_ALLOW_PUBLIC="0")
    with pytest.raises(RendezvousRefused, match="32\\+ random"):  # the id is still required
        _env(args, SEQ2SEQ_RDZV_ALLOW_PUBLIC="1")


def test_addresses_and_ids() -> None:
    assert [address_is_private(a) for a in ("10.0.0.1", "172.16.0.1", "::1", "fe80::1%eth0")] == [
        True, True, True, False,
    ]  # fmt: skip
    hosts = [endpoint_host(e) for e in ("h:1", "[::1]:2", "fd00::1", "h")]
    assert hosts == ["h", "::1", "fd00::1", "h"]
    check_run_id(RUN_ID)
    for bad in (RUN_ID.upper(), RUN_ID[:31], RUN_ID + " ", "ab" * 16):
        with pytest.raises(RendezvousRefused):
            check_run_id(bad)


def test_torchrun_reads_the_run_id_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``launch_env`` relies on: torchrun takes ``--rdzv-id`` from ``PET_RDZV_ID``."""
    from torch.distributed.run import get_args_parser

    monkeypatch.setenv(TORCHRUN_RDZV_ID_ENV, RUN_ID)
    args = get_args_parser().parse_args([*shlex.split(MULTI.format("10.0.0.10")), "x.py"])
    assert args.rdzv_id == RUN_ID
