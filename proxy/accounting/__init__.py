"""Accounting: prices, the ledger, spend and budgets, rate limits (`service.Accounting` ties them together)."""
