"""Which candidates a call offers: interfaces, the UDP port range, the public address; config checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quillman.config import WebRtcConfig
from quillman.webrtc import network
from quillman.webrtc.network import ConfiguredConnection, NetworkPolicy


@pytest.fixture
def installed():
    saved = ConfiguredConnection.policy
    yield
    ConfiguredConnection.policy = saved


async def gather(policy: NetworkPolicy):
    ConfiguredConnection.policy = policy
    connection = ConfiguredConnection(ice_controlling=False)
    await connection.gather_candidates()
    try:
        return list(connection.local_candidates)
    finally:
        await connection.close()


async def test_loopback_in_a_port_range(installed):
    candidates = await gather(NetworkPolicy(("127.0.0.1",), (41000, 41009), None))
    assert [(c.host, c.type) for c in candidates] == [("127.0.0.1", "host")]
    assert 41000 <= candidates[0].port <= 41009


async def test_the_public_address_is_advertised(installed):
    candidates = await gather(NetworkPolicy(("127.0.0.1",), None, "203.0.113.7"))
    assert [c.host for c in candidates] == ["203.0.113.7"]


async def test_a_full_range_offers_no_candidate_on_that_address(installed):
    import socket

    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        assert await gather(NetworkPolicy(("127.0.0.1",), (port, port), None)) == []
    finally:
        held.close()


def test_policy_from_config_and_environment():
    config = WebRtcConfig(host_interfaces=["lo"], udp_port_min=40000, udp_port_max=40099)
    policy = network.policy(config, environ={"QUILLMAN_WEBRTC_PUBLIC_ADDRESS": "198.51.100.4"})
    assert policy == NetworkPolicy(("127.0.0.1",), (40000, 40099), "198.51.100.4")
    assert network.policy(WebRtcConfig(), environ={}).is_default
    with pytest.raises(ValueError, match="match no interface"):
        network.policy(WebRtcConfig(host_interfaces=["no-such-if0"]), environ={})


@pytest.mark.parametrize("values, message", [
    ({"udp_port_min": 40000}, "go together"),
    ({"udp_port_min": 40100, "udp_port_max": 40000}, "above"),
    ({"public_address": "my.host"}, "not an IP address"),
    ({"ice_servers": [{"urls": ["http://x"]}]}, "stun:"),
    ({"ice_servers": [{"urls": ["turn:turn.example:3478"]}]}, "username and a credential"),
])
def test_bad_network_config(values, message):
    with pytest.raises(ValidationError, match=message):
        WebRtcConfig(**values)


def test_ice_servers_reach_aiortc():
    config = WebRtcConfig(ice_servers=[{"urls": ["stun:stun.example:3478"]},
                                       {"urls": ["turn:turn.example:3478"], "username": "u", "credential": "p"}])
    servers = network.rtc_configuration(config).iceServers
    assert [s.urls for s in servers] == [["stun:stun.example:3478"], ["turn:turn.example:3478"]]
    assert servers[1].username == "u"


async def test_the_receive_jitter_buffer_is_set():
    from aiortc import RTCPeerConnection

    from quillman.webrtc.media import set_jitter_buffer

    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("audio")
        assert set_jitter_buffer(transceiver.receiver, 2)
        assert transceiver.receiver._RTCRtpReceiver__jitter_buffer._prefetch == 2
        assert not set_jitter_buffer(object(), 2)  # not aiortc's receiver: left alone
    finally:
        await pc.close()
