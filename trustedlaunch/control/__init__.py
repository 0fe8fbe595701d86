"""The control plane: AKS limitations, resource services, preview features, operations, tokens."""
