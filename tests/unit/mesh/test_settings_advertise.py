"""advertise_host=auto registers the host's own address (containers and replicas)."""

from __future__ import annotations

import socket

from mesh.settings import ServiceSettings


def test_auto_is_this_hosts_address():
    expected = socket.gethostbyname(socket.gethostname())
    assert ServiceSettings(advertise_host="auto").advertise_host == expected


def test_an_explicit_address_is_kept():
    assert ServiceSettings(advertise_host="10.1.2.3").advertise_host == "10.1.2.3"
