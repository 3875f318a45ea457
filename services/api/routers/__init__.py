"""The API's routers, one per resource: items, orders, admin, health, dashboard."""
