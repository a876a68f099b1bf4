"""The OpenAI Responses API: its request model, input and output items, stored responses and conversations."""
