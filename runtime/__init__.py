"""How a regiongate process runs: serving (workers, logs, answers to unparseable requests),
telemetry (traces, metrics, access lines), TLS contexts and problem answers over HTTP. Above
``wire``, below every service."""
