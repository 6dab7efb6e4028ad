"""Azure ML at the HTTP layer: a workspace emulator the real SDK clients talk to, and its plumbing."""
