"""Policy stage: decides whether a requested turn may run (authorization, budgets)."""
