"""Model builders: small local models for the embedded experiments and real-model loaders."""
