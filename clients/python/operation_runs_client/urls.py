"""The broker's URLs: one, or the nodes of a cluster, tried in turn; and redaction of passwords."""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions

#: Most URLs one list may hold (as the service: a cluster has a handful of nodes, and each URL
#: may cost a connect timeout before the next is tried).
MAX_URLS = 16

# `scheme://user:password@` in any text: the password becomes `***` (as the service's redaction).
_USERINFO = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/?#@\s,]*):[^/?#\s,]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1:***@", text)


def parse_urls(urls: Union[str, Iterable[str]]) -> List[str]:
    """The URLs of ``urls``: one string (a comma-separated list, as ``AMQP_URL`` of the service;
    a comma in a password is ``%2C``) or a sequence of them. Spaces around each are trimmed,
    empty entries dropped. Raises ``ValueError`` (never showing a password) when none is left,
    more than :data:`MAX_URLS` are given, or one is not ``amqp://``/``amqps://``."""
    items = [urls] if isinstance(urls, str) else list(urls)
    parsed = [u.strip() for item in items for u in str(item).split(",") if u.strip()]
    if not parsed:
        raise ValueError("no AMQP URL given")
    if len(parsed) > MAX_URLS:
        raise ValueError(f"{len(parsed)} AMQP URLs given, at most {MAX_URLS} are accepted")
    for url in parsed:
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"{redact(url)} is not an amqp:// or amqps:// URL")
    return parsed


def describe(error: BaseException) -> str:
    """A library error as text for a message of ours: its type and redacted text."""
    text = redact(str(error))
    name = type(error).__name__
    return f"{name}: {text}" if text else name


class NoNodeAnswered(Exception):
    """Internal: no URL of the list gave a connection (the message is redacted)."""


class Nodes:
    """The URLs of one broker and where to start: the first that answers is used; after a lost
    connection the next one is tried first, so a dead node is tried last (as the service)."""

    def __init__(self, urls: Union[str, Iterable[str]], connection_name: str, default_heartbeat: Optional[int] = None):
        """``default_heartbeat`` (seconds, 0 for none) applies to URLs without ``?heartbeat=``;
        ``None`` accepts the broker's."""
        self.urls = parse_urls(urls)
        self._parameters = []
        for url in self.urls:
            try:
                parameters = pika.URLParameters(url)
            except Exception as e:  # pika echoes bad values; never the URL itself
                raise ValueError(f"{redact(url)}: {redact(str(e))}") from None
            if default_heartbeat is not None and "heartbeat" not in parse_qs(urlsplit(url).query):
                parameters.heartbeat = default_heartbeat
            # The client-provided name: shown by the broker (management UI, rabbitmqctl).
            parameters.client_properties = {**(parameters.client_properties or {}), "connection_name": connection_name}
            self._parameters.append(parameters)
        self._start = 0

    def connect(self) -> Tuple[pika.BlockingConnection, int]:
        """A connection to the first node that answers, starting where the last one succeeded
        (or after the one whose connection was lost), and that node's index. Raises
        :class:`NoNodeAnswered`."""
        failures = []
        n = len(self.urls)
        for k in range(n):
            i = (self._start + k) % n
            try:
                connection = pika.BlockingConnection(self._parameters[i])
            except (pika.exceptions.AMQPError, OSError) as e:
                failures.append(f"{redact(self.urls[i])} ({describe(e)})")
                continue
            self._start = i
            return connection, i
        raise NoNodeAnswered("no broker node answered: " + "; ".join(failures))

    def lost(self, node: int) -> None:
        """The connection to ``node`` was lost: the next attempt starts with the following one."""
        self._start = (node + 1) % len(self.urls)
