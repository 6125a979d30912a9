"""Networking policies for a jail.

  none  (default) no external network: sockets of the IP families are refused
        (EAFNOSUPPORT); AF_UNIX, netlink and the rest work.
  host  sockets pass straight through to the host's network stack.

Later modes (a TAP device with a user-space TCP/IP stack, NAT through passt,
port forwards) keep the same shape: guest sockets stay real host descriptors.
A policy edits the jail's own syscall table before the seccomp filter is
compiled from it, so `host` costs nothing per call and `none` traps socket().
"""
from __future__ import annotations

import errno
import socket

MODES = ("none", "host")
IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def apply(table, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown network mode '{mode}'; use one of: {', '.join(MODES)}")
    if mode == "none":
        table.emulate("socket", _socket_without_ip, note="--net none: IP families refused")


def _socket_without_ip(k, c):
    from umlrun.kernel import CONTINUE, SysError
    if c.args[0] & 0xFFFFFFFF in IP_FAMILIES:
        raise SysError(errno.EAFNOSUPPORT)
    return CONTINUE
