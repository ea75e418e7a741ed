"""Source files: what may be read under a root, scanning and planning, snapshots, file types."""
