"""Remote providers: the HTTP machinery and one backend per wire format (TEI, HF hosted, Cohere)."""
