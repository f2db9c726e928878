"""Directory clients, home-region resolution and the pooled ledger client (issue 3).
So far: the signed ledger client that tests and benchmarks use."""
