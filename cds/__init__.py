"""CDS Hooks 2.0.1 rules service."""
