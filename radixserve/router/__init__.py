"""Data-parallel serving: a router in front of radixserve replicas that mirrors each replica's
radix cache to the token and sends every request where its prefix is cached."""
