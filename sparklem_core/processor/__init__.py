"""The processor: consume, verify, decrypt, hand to a plugin, store with the offset, commit."""
