"""Host names: uname, sethostname, setdomainname answer from the jail's own
names (--hostname), never the host's."""
from __future__ import annotations

import errno
import os

from umlrun.call import Call, SysError

UTS_LEN = 65


def sys_uname(k, c: Call):
    host = os.uname()
    fields = (host.sysname.encode(), k.hostname, host.release.encode(), host.version.encode(),
              host.machine.encode(), k.domainname)
    c.write(c.args[0], b"".join(f[:UTS_LEN - 1].ljust(UTS_LEN, b"\0") for f in fields))
    return 0


def _set_name(k, c: Call, attr: str) -> int:
    size = c.args[1]
    if c.proc.cred.euid != 0:
        raise SysError(errno.EPERM)
    if size > UTS_LEN - 1:
        raise SysError(errno.EINVAL)
    setattr(k, attr, c.read(c.args[0], size))
    return 0


def register(t) -> None:
    t.emulate("uname", sys_uname, note="jail hostname")
    t.emulate("sethostname", lambda k, c: _set_name(k, c, "hostname"), note="jail hostname")
    t.emulate("setdomainname", lambda k, c: _set_name(k, c, "domainname"), note="jail domain name")
