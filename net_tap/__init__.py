"""Networking policies for a jail.

  none  (default) no external network: sockets of the IP families are refused
        (EAFNOSUPPORT), netlink too (its routing protocol shows the host's
        interfaces).
  host  sockets pass straight through to the host's network stack; netlink
        only for routing (NETLINK_ROUTE: the host's interfaces are the jail's).

In every mode socket() and socketpair() take an allow-list of families:
AF_UNIX always, the IP families per the policy, AF_NETLINK as above; any
other family (AF_VSOCK, AF_PACKET, AF_KEY...) gets EAFNOSUPPORT, Linux's
answer for a family it lacks, and a netlink protocol outside the list
EPROTONOSUPPORT (NETLINK_SOCK_DIAG would list the host's sockets and their
processes; others list or broadcast host-wide objects).

Later modes (a TAP device with a user-space TCP/IP stack, NAT through passt,
port forwards) keep the same shape: guest sockets stay real host descriptors.
A policy edits the jail's own syscall table before the seccomp filter is
compiled from it: the families are int rules on socket()'s first argument,
checked in the filter itself, so an allowed socket() costs no trap.
"""
from __future__ import annotations

import errno
import socket

MODES = ("none", "host")
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
AF_NETLINK, NETLINK_ROUTE = 16, 0
_U32_MAX = 0xFFFFFFFF


def apply(table, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown network mode '{mode}'; use one of: {', '.join(MODES)}")
    allowed = {socket.AF_UNIX} | (set(IP_FAMILIES) if mode == "host" else set())
    if mode == "host":
        table.trace_when("socket", 0, (AF_NETLINK,), _netlink_route_only,
                         "AF_NETLINK: NETLINK_ROUTE only, other protocols EPROTONOSUPPORT")
    else:
        table.refuse("socket", 0, AF_NETLINK, errno.EPROTONOSUPPORT, "AF_NETLINK refused (--net none)")
    allowed.add(AF_NETLINK)  # decided by the rule above
    _refuse_other_families(table, "socket", allowed)
    # socketpair: netlink has none (EOPNOTSUPP natively, no socket is left)
    _refuse_other_families(table, "socketpair", allowed)


def _refuse_other_families(table, name: str, allowed: set[int]) -> None:
    """EAFNOSUPPORT for every value of the family argument but `allowed`: the
    ranges between them, as int rules ([lo, hi) ranges of the low 32 bits)."""
    rules, lo = [], 0
    for family in sorted(allowed) + [_U32_MAX]:
        if family > lo:
            rules.append((0, (lo, family), ("errno", errno.EAFNOSUPPORT)))
        lo = family + 1
    rules.append((0, _U32_MAX, ("errno", errno.EAFNOSUPPORT)))
    entry = table[name]
    entry.int_rules += tuple(rules)
    entry.note += "; families other than " + ", ".join(str(f) for f in sorted(allowed)) + ": EAFNOSUPPORT"


def _netlink_route_only(k, c):
    if c.args[2] & 0xFFFFFFFF != NETLINK_ROUTE:
        return -errno.EPROTONOSUPPORT
    return None
