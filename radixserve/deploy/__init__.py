"""Deploying radixserve on cluster frameworks (Ray Serve): replicas, their ingress, cache-aware routing."""
