"""Thin kopf handlers: parse the body, call one applier, translate outcomes into kopf errors."""
