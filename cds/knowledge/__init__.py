"""Importers that turn external clinical sources into knowledge tables."""
