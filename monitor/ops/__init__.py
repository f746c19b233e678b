"""Operations: systemd notification and Prometheus metrics (thin shells, no detection logic)."""
