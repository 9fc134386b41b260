"""Examples of extending the app (see README, "Write your own strategy")."""
