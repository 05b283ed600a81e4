"""Which addresses and ports a call's ICE offers: interfaces, a UDP port range, a public address.

aiortc takes STUN/TURN servers (``RTCConfiguration``) but always binds every non-loopback
interface on an ephemeral port (aioice's ``Connection``). A server in a container or a KubeRay
pod needs more: candidates on the pod's interface only, ports from a range the firewall opens,
and the address callers see (a load balancer, a NAT's public IP) advertised in place of the
local one. :class:`ConfiguredConnection` is aioice's ``Connection`` with host candidates gathered
that way; :func:`install` makes aiortc use it in this process (the ingress replica, which holds
one config). STUN and TURN candidates are gathered as aioice does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import socket
from dataclasses import dataclass

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from quillman.config import WebRtcConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkPolicy:
    addresses: tuple[str, ...] | None  # host candidate addresses; None: aioice's choice
    ports: tuple[int, int] | None  # inclusive UDP range; None: ephemeral
    public_address: str | None

    @property
    def is_default(self) -> bool:
        return self.addresses is None and self.ports is None and self.public_address is None


def interface_addresses(wanted: list[str], use_ipv6: bool) -> list[str]:
    """The addresses of the named interfaces (names or addresses), in the order given."""
    found: list[str] = []
    adapters = ifaddr.get_adapters()
    for name in wanted:
        for adapter in adapters:
            for ip in adapter.ips:
                address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                if not use_ipv6 and not isinstance(ip.ip, str):
                    continue
                if isinstance(ip.ip, tuple) and ip.ip[2] != 0:
                    continue  # link-local with a scope: not reachable by a caller
                if name in (adapter.name, adapter.nice_name, address) and address not in found:
                    found.append(address)
    return found


def policy(config: WebRtcConfig, environ=os.environ) -> NetworkPolicy:
    public = environ.get(config.public_address_env) or config.public_address
    if public is not None:
        ipaddress.ip_address(public)  # a bad env value fails at startup, like the config
    addresses = None
    if config.host_interfaces:
        addresses = tuple(interface_addresses(config.host_interfaces, config.use_ipv6))
        if not addresses:
            raise ValueError(f"webrtc.host_interfaces {config.host_interfaces} match no interface here")
    ports = None if config.udp_port_min is None else (config.udp_port_min, config.udp_port_max)
    return NetworkPolicy(addresses, ports, public)


def rtc_configuration(config: WebRtcConfig) -> RTCConfiguration:
    servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
               for s in config.ice_servers]
    return RTCConfiguration(iceServers=servers)


class ConfiguredConnection(aioice.ice.Connection):
    """aioice's Connection, gathering host candidates by the installed :class:`NetworkPolicy`."""

    policy: NetworkPolicy = NetworkPolicy(None, None, None)

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5):
        policy = self.policy
        if policy.is_default:
            return await super().get_component_candidates(component, addresses, timeout)
        chosen = list(policy.addresses) if policy.addresses is not None else addresses
        candidates = []
        for address in chosen:
            protocol = await self._bind(address, policy.ports)
            if protocol is None:
                continue
            host, port = protocol.transport.get_extra_info("sockname")[:2]
            advertised = policy.public_address or host
            protocol.local_candidate = aioice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "udp", advertised),
                component=component, transport="udp",
                priority=aioice.ice.candidate_priority(component, "host"),
                host=advertised, port=port, type="host")
            self._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        # STUN / TURN as aioice does them (its host gathering skipped: no addresses).
        if self.stun_server and policy.public_address is None:
            for protocol in list(self._protocols):
                if protocol.local_candidate in candidates and ipaddress.ip_address(protocol.local_candidate.host).version == 4:
                    try:
                        candidate, _ = await asyncio.wait_for(
                            aioice.ice.server_reflexive_candidate(protocol, self.stun_server), timeout)
                        candidates.append(candidate)
                    except (TimeoutError, OSError, aioice.ice.stun.TransactionError):
                        logger.info("STUN request to %s failed", self.stun_server)
        if self.turn_server:
            candidates += await super().get_component_candidates(component, [], timeout)
        return candidates

    async def _bind(self, address: str, ports: tuple[int, int] | None):
        loop = asyncio.get_running_loop()
        if ports is None:
            choices = [0]
        else:  # start at a random place so concurrent calls don't all race for the first port
            low, high = ports
            start = random.randint(low, high)
            choices = [*range(start, high + 1), *range(low, start)]
        for port in choices:
            try:
                transport, protocol = await loop.create_datagram_endpoint(
                    lambda: aioice.ice.StunProtocol(self), local_addr=(address, port))
            except OSError:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.ice.turn.UDP_SOCKET_BUFFER_SIZE)
            return protocol
        logger.warning("no free UDP port on %s in %s: this address offers no candidate", address, ports)
        return None


def install(network: NetworkPolicy) -> None:
    """aiortc's ICE transports use ``network`` from now on (this process)."""
    import aiortc.rtcicetransport

    ConfiguredConnection.policy = network
    aiortc.rtcicetransport.Connection = ConfiguredConnection
