"""One way to keep secrets out of messages, logs and ``repr()``.

A URL's userinfo is everything between ``scheme://`` and the *last* ``@`` of
the URL: a password may hold ``/``, ``?``, ``#``, ``:``, ``%`` or ``@``
(unencoded, by mistake or by hostility), and a parser that stops the
authority at the first ``/`` would take it for a path and print it. Cutting
at the last ``@`` may hide a little more than the userinfo (an ``@`` in a
path or query): a message then names less, never a secret.

Text that is not ours (a parser's or a client library's error message) may
quote the URL whole: :func:`scrub` removes the given secrets from it in
every spelling a library could print (as given, percent-decoded,
percent-encoded).
"""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Tuple
from urllib.parse import quote, unquote

MASK = "***"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def userinfo(url: str) -> Optional[str]:
    """The userinfo of ``url`` as written (None when there is none)."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    rest = url[match.end() :]
    if "@" not in rest:
        return None
    return rest.rpartition("@")[0]


def checked(value: str, argument: str) -> str:
    """``value`` as messages show it (:func:`url`), once it is known to be safe to parse.

    A URL holding white space or a control character, or a user name or
    password holding an unencoded '/', '?' or '#' (a parser would split it
    there and quote the rest) or a quote or angle bracket (where a message
    quoting the URL would end it, past :func:`text`'s reach), is a
    ``ValueError`` naming ``argument``.
    """
    shown = url(value)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{argument}: {shown!r} holds white space or a control character")
    info = userinfo(value)
    if info is not None and any(c in info for c in "/?#'\"<>"):
        raise ValueError(
            f"{argument}: {shown!r}: a user name or password holding / ? # ' \" < or > must be percent-encoded"
        )
    return shown


def url(text: str, *, names: bool = False) -> str:
    """``text`` (a URL) without its password: ``scheme://user@host...`` (``scheme://***@host...``
    when the userinfo is a name alone, unless ``names``: a store's ``location``, which
    by contract holds no password, keeps its user name)."""
    info = userinfo(text)
    if info is None:
        return text
    match = _SCHEME.match(text)
    assert match is not None
    user, colon, _ = info.partition(":")
    # The user name stays when a password follows it (it says which account); a
    # lone name may itself be the secret (a token), so it is masked.
    shown = user if user and (colon or names) else MASK
    return f"{match.group(0)}{shown}@{text[match.end() :].rpartition('@')[2]}"


_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")


def text(message: str) -> str:
    """``message`` with the userinfo of every URL in it masked (up to the last ``@`` before a space or quote)."""
    return _IN_TEXT.sub(lambda m: url(m.group(0) + "host")[: -len("host")], message)


def secrets_of(text: str) -> Tuple[str, ...]:
    """The spellings of ``text``'s userinfo (and of its password alone) a library might print."""
    info = userinfo(text)
    if not info:
        return ()
    found: List[str] = [info]
    user, colon, password = info.partition(":")
    if colon and password:
        found.append(password)
    elif user:
        found.append(user)
    more: List[str] = []
    for secret in found:
        more += [unquote(secret), quote(secret, safe=""), quote(unquote(secret), safe="")]
    return tuple(s for s in dict.fromkeys(found + more) if s)


def scrub(message: str, secrets: Iterable[str]) -> str:
    """``message`` with every occurrence of each secret (longest first) replaced by ``***``."""
    for secret in sorted(set(s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message


def headers(pairs: Iterable[Tuple[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """Header pairs with their values hidden (names stay: they say what is configured)."""
    return tuple((name, MASK) for name, _ in pairs)
