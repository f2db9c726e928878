"""The legacy user migration (``regiongate identity migrate``): an operator's existing users
become players, each with a unique valid username and a public id, decided before anything is
written, loaded by chunks with checkpoints, resumable after any crash (docs/migration.md)."""
