"""The flash-sale stack: a FastAPI front on Redis, RabbitMQ, Celery workers on gmpworker, PostgreSQL."""
