"""Shipped model artifacts and the recipes that train them (`python -m heserve.models`)."""
