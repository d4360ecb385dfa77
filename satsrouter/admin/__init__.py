"""The operator's side of the node: admin authentication, live settings, usage figures."""
