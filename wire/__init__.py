"""What crosses a process boundary, shared by every service and tool: ids and their patterns,
the result enum and the problem types with their one renderer, the service signatures, and the
bounds every layer checks. The bottom layer: it imports nothing of the project."""
