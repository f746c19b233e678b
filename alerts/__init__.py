"""Alerting: correlation into incidents, routing, a durable outbox, and notifiers."""
