"""Datasets and batching helpers."""
