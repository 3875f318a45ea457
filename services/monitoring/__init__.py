"""Monitoring configuration: Prometheus scrape configs and Grafana provisioning and dashboards."""
