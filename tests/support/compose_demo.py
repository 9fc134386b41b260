"""The compose demo's run configuration, shared by the compose tier (tests/test_compose_demo.py)
and the check that the README and docs/howto/docker-compose.md show the same commands."""

# One short round, the sites' evaluation capped: the README's compose commands.
DEMO_RUN_CONFIG = ["num-server-rounds=1", "train.max-steps=4", "eval.max-instances=4",
                   "strategy.validation-instances=8"]
