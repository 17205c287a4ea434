"""The engine: a request, its plan, the orchestrator that scores it, the runtime that owns shared resources."""
