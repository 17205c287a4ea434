"""Adapters that put dheera_local's engine inside other frameworks' pipelines.

* :mod:`dheera_local.integrations.langchain`: ``DheeraRerank``, a LangChain document compressor
  (``pip install "dheera_local[langchain]"``).
* :mod:`dheera_local.integrations.llama_index`: ``DheeraRerank``, a LlamaIndex node postprocessor
  (``pip install "dheera_local[llama-index]"``).

Both serve every call through a :class:`dheera_local.Reranker` (local weights first, remote fallback,
the score cache), the default one behind ``dheera_local.rerank`` unless you pass your own. This package
imports neither framework: each loads only when its module is imported, so one can be installed
without the other.
"""
