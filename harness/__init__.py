"""Mooncake end-to-end CI harness: prepares GPU hosts, runs SGLang/vLLM cases, writes results."""
