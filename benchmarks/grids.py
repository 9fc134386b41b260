"""Stand-ins for Flower's Grid, for benchmarks and tests that run a strategy or the message
protocol without SuperLink and SuperNodes. (The product's own Grid wrappers stay with what
they wrap: wire/transport.py, strategies/secure_aggregation.py, strategies/screened.py.)

- `NodesGrid`: only the connected nodes, what `configure_train` asks of a Grid
  (benchmarks/aggregation.py).
- `as_sent`: site replies cut to the factors a strategy's round has sites send (FFA-LoRA: B
  only), as the ClientApp sends them (benchmarks/aggregation.py, tests/support/strategy_harness.py).
- `LocalGrid`: delivers each message, serialised as on the wire, to the project's real
  ClientApp, one Context per site (kept across messages, as a SuperNode keeps it), and keeps
  every message both ways (benchmarks/secure_aggregation.py, tests/test_secure_aggregation.py).
  A site can be told not to answer a given SecAgg+ stage, to test what the protocol does
  when a site is lost there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import Strategy

from settings.config import RunConfig
from strategies.core_hooks import factor_rule
from strategies.flower_compat import over_the_wire, secaggplus_stage
from wire import protocol


class NodesGrid:
    """Enough of flwr's Grid for `configure_train`: the connected nodes, 1 to `sites`."""

    def __init__(self, sites: int) -> None:
        self.sites = sites

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.sites + 1))


def as_sent(strategy: Strategy, replies: list[Message], instruction: Callable[[int], Message],
            server_round: int = 1, whole: Callable[[Message], bool] = lambda _: True) -> list[Message]:
    """`replies` (whole adapters) cut to the factors `server_round` has the sites send, each
    re-addressed as the reply to `instruction(node_id)`. Replies for which `whole` is false
    (an error reply, a malformed adapter a test sends on purpose) go as they are."""
    send = factor_rule(strategy, server_round)[1]
    if send == "AB":
        return replies
    out = []
    for message in replies:
        if message.has_error() or not whole(message):
            out.append(message)
            continue
        record = message.content["arrays"]
        sent = ArrayRecord({k: record[k] for k in protocol.selected_factors(dict.fromkeys(record.keys()), send)})
        content = RecordDict({name: sent if name == "arrays" else value for name, value in message.content.items()})
        out.append(Message(content=content, reply_to=instruction(message.metadata.src_node_id)))
    return out


class LocalGrid:
    def __init__(self, run_config: RunConfig, node_configs: dict[int, dict]) -> None:
        from client_app.app import app

        self.app = app
        self.contexts = {node: Context(run_id=1, node_id=node, node_config=cfg, state=RecordDict(),
                                       run_config=run_config.as_dict()) for node, cfg in node_configs.items()}
        self.silent: set[tuple[int, str]] = set()  # (node, SecAgg+ stage) it does not answer
        self.sent: list[Message] = []  # what the coordinator sent
        self.received: list[Message] = []  # what the sites answered
        self._replies: dict[str, Message] = {}

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's InMemoryGrid does
            stage = secaggplus_stage(msg)
            self.sent.append(msg)
            ids.append(msg.metadata.message_id)
            if (msg.metadata.dst_node_id, stage) in self.silent:
                continue
            reply = over_the_wire(self.app(over_the_wire(msg), self.contexts[msg.metadata.dst_node_id]))
            self.received.append(reply)
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        del timeout
        return self.pull_messages(self.push_messages(messages))

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)
