"""Who is calling: the kernel's peer credentials (SO_PEERCRED), the user's groups, and their roles.

Guarantees: identity comes only from the kernel, never from what a client says; roles come only from
OS group membership named in `[control]` (uid 0 is admin). The actor recorded for a call is the real
user name and uid, with the highest role of theirs that allows the command.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ingestd.config import ControlConfig
from store.audit import Actor, Role

# The order in which a caller's role is named in the audit trail when several allow a command.
ROLE_PRECEDENCE = (Role.ADMIN, Role.APPROVER, Role.AUDITOR, Role.CLERK, Role.VIEWER)
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Caller:
    user: str
    uid: int
    pid: int
    groups: frozenset[str]
    roles: frozenset[Role]

    @property
    def source(self) -> str:
        return f"ctl:uid={self.uid} pid={self.pid}"

    def actor(self, allowed: frozenset[Role] | None = None) -> Actor:
        """The audit actor: the best of the caller's roles among `allowed`, else the best they hold."""
        usable = (self.roles & allowed if allowed is not None else frozenset()) or self.roles
        for role in ROLE_PRECEDENCE:
            if role in usable:
                return Actor(user=self.user, uid=self.uid, role=role, source=self.source)
        return unprivileged_actor(self.user, self.uid, self.source)


def peer_credentials(connection: socket.socket) -> Peer:
    raw = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Peer(pid=pid, uid=uid, gid=gid)


def roles_for(uid: int, groups: Iterable[str], config: ControlConfig) -> frozenset[Role]:
    """Pure: the roles OS group names give. Empty group names in the config give nothing."""
    by_group = {
        config.admin_group: Role.ADMIN,
        config.clerk_group: Role.CLERK,
        config.approver_group: Role.APPROVER,
        config.auditor_group: Role.AUDITOR,
        config.viewer_group: Role.VIEWER,
    }
    by_group.pop("", None)
    roles = {by_group[name] for name in groups if name in by_group}
    if uid == 0:
        roles.add(Role.ADMIN)
    return frozenset(roles)


def group_names(user: str | None, gid: int) -> frozenset[str]:
    """Names of the primary group and every supplementary group of `user` (from the group database)."""
    gids = {gid}
    if user is not None:
        # An unknown user has only the primary gid the kernel reported.
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(user, gid))
    names: set[str] = set()
    for each in gids:
        try:
            names.add(grp.getgrgid(each).gr_name)
        except KeyError:
            continue  # a gid with no name cannot name a role
    return frozenset(names)


def resolve(peer: Peer, config: ControlConfig) -> Caller:
    try:
        user: str | None = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        user = None
    groups = group_names(user, peer.gid)
    return Caller(
        user=user if user is not None else f"uid:{peer.uid}",
        uid=peer.uid,
        pid=peer.pid,
        groups=groups,
        roles=roles_for(peer.uid, groups, config),
    )


def current_caller(config: ControlConfig) -> Caller:
    """This process's own identity, for commands that read the catalog directly (the daemon is down)."""
    return resolve(Peer(pid=os.getpid(), uid=os.getuid(), gid=os.getgid()), config)


def unprivileged_actor(user: str, uid: int | None, source: str) -> Actor:
    """A caller holding no role: recorded exactly as they are, never under a role they lack."""
    return Actor(user=user, uid=uid, role=Role.NONE, source=source)
