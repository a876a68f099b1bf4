"""The OpenAI protocol: request models, response bodies, field policy, parameters, structured output and tools."""
