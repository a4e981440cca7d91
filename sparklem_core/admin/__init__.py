"""Administration: enrolling and revoking agents, writing their bundles, scaffolding plugins."""
