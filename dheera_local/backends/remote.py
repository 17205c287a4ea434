"""Builds remote backends that share one set of pooled HTTP clients and endpoint limits."""

from __future__ import annotations

from pydantic import SecretStr

from ._http import HttpClients, RetryPolicy
from .cohere import CohereBackend
from .hf_hosted import HFHostedBackend, hf_token
from .tei import EndpointLimits, TEIBackend


class RemoteFactory:
    """One per orchestrator: owns the HTTP clients (closed with it) and the retry policy."""

    def __init__(self, clients: HttpClients | None = None, policy: RetryPolicy | None = None) -> None:
        self.clients = clients or HttpClients()
        self.policy = policy or RetryPolicy()
        self.limits = EndpointLimits()

    def tei(self, api_base: str, api_key: SecretStr | None, timeout: float | None) -> TEIBackend:
        return TEIBackend(api_base, self.limits, self.clients, self.policy, api_key, timeout)

    def hf_hosted(self, hub_id: str, api_key: SecretStr | None, timeout: float | None) -> HFHostedBackend:
        return HFHostedBackend(hub_id, self.clients, self.policy, hf_token(api_key), timeout)

    def cohere(self, api_base: str, model: str, api_key: SecretStr | None, timeout: float | None) -> CohereBackend:
        return CohereBackend(api_base, model, self.clients, self.policy, api_key, timeout)

    def close(self) -> None:
        self.clients.close()

    async def aclose(self) -> None:
        await self.clients.aclose()
        self.clients.close()
