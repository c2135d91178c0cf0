"""Credentials out of URLs before they are printed, logged or stored."""

from __future__ import annotations

import re

SECRET_PARAMETER = re.compile(r"pass|pwd|token|key|secret|auth|sig|credential|session", re.I)


def redact(url: str) -> str:
    """The URL with its password and secret query values replaced by ``***``.

    The userinfo runs to the last ``@`` before the query, so a password holding ``@`` or
    ``/`` is hidden whole (a path with ``@`` in it is hidden too: the safe side). Query
    parameters whose name looks secret (password, pwd, token, key, secret, auth, sig, ...) keep
    their name only. Plain paths are returned unchanged.

    Example:
        >>> redact("rtsp://admin:se@cr/et@10.0.0.5:554/stream1")
        'rtsp://admin:***@10.0.0.5:554/stream1'
        >>> redact("http://cam/video?user=admin&password=hunter2&channel=1")
        'http://cam/video?user=admin&password=***&channel=1'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    if "@" in head:
        userinfo, host = rest[: head.rindex("@")], rest[head.rindex("@") + 1 :]
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{host}" if colon else f"{userinfo}@{host}"
    path, question, query = rest.partition("?")
    if question:
        query = re.sub(r"(^|[&;])([^=&;]*)=([^&;#]*)", lambda m: f"{m[1]}{m[2]}={'***' if SECRET_PARAMETER.search(m[2]) else m[3]}", query)
    return f"{scheme}://{path}{question}{query}"
