"""free_port: ports a restarted server can count on getting back."""

from __future__ import annotations

import socket

from pairdb.local.processes import _ephemeral_range, free_port


def test_free_ports_lie_outside_the_range_the_kernel_hands_out_for_port_zero() -> None:
    # A storage node killed by a fault comes back on its port; had that port been
    # ephemeral, any process binding or connecting meanwhile could have taken it.
    low, high = _ephemeral_range()
    ports = {free_port() for _ in range(200)}
    assert not any(low <= p <= high for p in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert low <= sock.getsockname()[1] <= high  # what port 0 gets: never one of ours


def test_a_free_port_is_free_and_never_the_one_excluded() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    try:
        port = taken.getsockname()[1]
        assert all(free_port(exclude=port) != port for _ in range(100))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", free_port()))
    finally:
        taken.close()


def test_a_process_never_gets_the_same_port_twice() -> None:
    # Servers bind their ports some time after they were picked: two picks must differ.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
