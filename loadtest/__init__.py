"""The flash-sale spike test: locust shoppers, a spike shape, a runner, a verifier, a report.

``python -m loadtest spike --target native|compose|<url>`` runs it end to end.
"""
