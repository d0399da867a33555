"""An engine folder as the runtime reads it: its manifest, schema, file integrity, shape
profiles and the keyed caches of what backends compile from it."""
