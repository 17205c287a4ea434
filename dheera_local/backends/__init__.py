"""Backends score (query, text) pairs and return raw logits in input order.

One interface (:class:`~dheera_local.backends.base.Backend`); sorting, ``top_n``, caching,
the sigmoid and the response live above it, in the orchestrator.
"""
