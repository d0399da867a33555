"""Images in and out: loading and resizing, labels written and read, C2PA, contact sheets."""
