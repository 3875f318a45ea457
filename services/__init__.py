"""The flash-sale stack: FastAPI on Redis, RabbitMQ, Celery workers on gmpworker, PostgreSQL."""
