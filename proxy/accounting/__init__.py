"""Accounting: prices and cost (more to come: ledger, budgets, limits)."""
