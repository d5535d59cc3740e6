"""Shipped models, their cards and the registry; the product class list (models.classes)."""
