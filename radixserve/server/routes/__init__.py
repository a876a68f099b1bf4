"""HTTP routes, one module per API family; each registers its endpoints on the app."""
