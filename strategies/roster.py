"""The sites of a run: which site a reply, or a missing reply, belongs to.

Flower's `send_and_receive` returns only the replies that arrived within the timeout, and
the SuperLink answers for a SuperNode it has lost (missed heartbeats) with an error reply of
its own, not one from that node. So that a round's report names every site that did not
answer, `WatchedGrid` notes where each train and evaluate instruction went (its node, and
its message id once pushed) and `SiteRoster.label_replies` matches the replies against it.
A site is named by the name in its replies, else by the name its SuperNode registered with,
else by its node id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from .screening import Rejection, reply_site_name


@dataclass
class Exchange:
    """Where the instructions of one train or evaluate exchange went."""

    nodes: list[int]  # destination node of each instruction, in order
    by_message_id: dict[str, int]  # message id (set when pushed) -> destination node
    timeout: float | None


class SiteRoster:
    """Site names by node, and the last train and evaluate exchange (noted by `WatchedGrid`)."""

    def __init__(self) -> None:
        self._names_by_node: dict[int, str] = {}  # node id -> the site name it sent or registered
        self._exchanges: dict[str, Exchange] = {}  # message type -> the last exchange

    def label_replies(self, replies: list[Message], kind: str) -> tuple[list[tuple[str, Message]], list[Rejection]]:
        """(site, reply) for every reply, and (site, reason) for every node that was sent an
        instruction of this kind (through a `WatchedGrid`) and did not answer."""
        exchange = self._exchanges.pop(kind, None)  # each aggregation consumes its own
        labelled, answered = [], set()
        for msg in replies:
            node = _reply_node(msg, exchange)
            answered.add(node)
            labelled.append((self._site_of(msg, node), msg))
        missing = []
        if exchange is not None:
            reason = _no_reply(exchange.timeout)
            missing = [(self.node_label(n), reason) for n in dict.fromkeys(exchange.nodes) if n not in answered]
        return labelled, missing

    def node_label(self, node: int) -> str:
        return self._names_by_node.get(node) or f"node {node}"

    def _site_of(self, msg: Message, node: int) -> str:
        """The reply's own site name (remembered for its node), else what its node is known as."""
        name = reply_site_name(msg)
        if name is None:
            return self.node_label(node)
        self._names_by_node[node] = name
        return name

    def note_exchange(self, messages: Sequence[Message], timeout: float | None) -> None:
        """Where a train or evaluate exchange's instructions went (other types are ignored)."""
        sent: dict[str, Exchange] = {}
        for msg in messages:
            kind = msg.metadata.message_type
            if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
                continue
            exchange = sent.setdefault(kind, Exchange([], {}, timeout))
            node = msg.metadata.dst_node_id
            exchange.nodes.append(node)
            if msg.metadata.message_id:
                exchange.by_message_id[msg.metadata.message_id] = node
        self._exchanges.update(sent)

    def learn_node_names(self, grid: Grid, messages: Sequence[Message]) -> None:
        """Names the SuperLink knows (SuperNodes registered with a name) for nodes not yet named."""
        unknown = {m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.TRAIN}
        unknown -= set(self._names_by_node)
        if not unknown:
            return
        try:
            nodes = list(grid.get_nodes())
        except Exception:  # noqa: BLE001 - names are a nicety: node ids still name the sites
            return
        for info in nodes:
            node, name = getattr(info, "node_id", None), getattr(info, "name", "")
            if node in unknown and name:
                self._names_by_node[node] = str(name)


class WatchedGrid:
    """A Grid that tells a `SiteRoster` where each train and evaluate instruction went;
    everything else is the wrapped Grid's."""

    def __init__(self, grid: Grid, roster: SiteRoster) -> None:
        self._grid = grid
        self._roster = roster

    def __getattr__(self, name: str) -> Any:
        if name in ("_grid", "_roster"):  # not set yet (a copy): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """The wrapped Grid's `send_and_receive`, noting where the instructions went."""
        messages = list(messages)
        self._roster.learn_node_names(self._grid, messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._roster.note_exchange(messages, timeout)  # after the push: message ids are set
        return replies


def _reply_node(msg: Message, exchange: Exchange | None) -> int:
    """The node a reply answers for: its sender, or, for an error reply the SuperLink sent
    about a lost node, the node the instruction went to."""
    src = msg.metadata.src_node_id
    if exchange is not None and src not in exchange.nodes:
        node = exchange.by_message_id.get(msg.metadata.reply_to_message_id)
        if node is not None:
            return node
    return src


def _no_reply(timeout: float | None) -> str:
    if timeout is None:
        return "no reply"
    return f"no reply within strategy.round-timeout = {timeout:g} s (the site stopped, lost its connection or is too slow)"
