"""Examples of extending the app (see docs/strategies.md, "Write your own strategy")."""
