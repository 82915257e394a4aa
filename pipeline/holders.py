"""Who holds a lease or sends a heartbeat: a name for this process, and whether
the process a name belongs to is certainly dead.

A holder name is ``host:pid:start:random``.  ``start`` is the process's start time
as the kernel counts it (``/proc/<pid>/stat``, clock ticks since boot), so a pid
reused by a later process (after a crash, or a reboot) does not pass for the old
holder; ``random`` keeps two acquisitions by one process apart.  Only a holder on
this host can be judged: one elsewhere is alive until its lease runs out.
"""
from __future__ import annotations

import os
import socket
import uuid


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (kernel clock ticks since boot), None if it does not run
    (or this is not Linux, where the pid check alone has to do)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read().decode("ascii", "replace")
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    # the command name (field 2) may hold spaces and parentheses: fields start after the last ")"
    fields = raw[raw.rfind(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie has finished: only its exit status is left
        return None
    return fields[19] if len(fields) > 19 else "?"


_SELF_START: str | None = None


def new_holder() -> str:
    global _SELF_START
    if _SELF_START is None:
        _SELF_START = process_start(os.getpid()) or "?"
    return f"{socket.gethostname()}:{os.getpid()}:{_SELF_START}:{uuid.uuid4().hex[:8]}"


def parse(holder: str) -> tuple[str, int | None, str | None]:
    """(host, pid, start) of a holder name; older names (``host:pid`` or
    ``host:pid:random``) have no start time."""
    parts = holder.split(":")
    if len(parts) >= 4 and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    if len(parts) >= 2 and parts[1].isdigit():
        return parts[0], int(parts[1]), None
    return holder, None, None


def is_dead(holder: str | None) -> bool:
    """True only when ``holder`` is a process on this host that no longer runs (or
    whose pid now belongs to a process started later)."""
    if not holder:
        return False
    host, pid, start = parse(holder)
    if pid is None or host != socket.gethostname():
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process runs with that pid: compare start times below
    now_start = process_start(pid)
    if now_start is None:
        return True
    return start not in (None, "?") and now_start != "?" and now_start != start
