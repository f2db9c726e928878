"""Events: the transactional outbox's relay to Redis Streams, and the consumers that read them
(docs/events.md)."""
