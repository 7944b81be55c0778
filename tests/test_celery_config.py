"""Celery routing: three queues, each with its own routing key, and tasks routed by name."""

from config.celery import app


def test_queues_default_ai_gpu_have_distinct_routing_keys() -> None:
    queues = {q.name: q.routing_key for q in app.conf.task_queues}
    assert queues == {"default": "default", "ai": "ai", "gpu": "gpu"}


def test_tasks_are_routed_by_name() -> None:
    router = app.amqp.router
    assert router.route({}, "models_srv.tasks.train_reward_model")["queue"].name == "gpu"
    assert router.route({}, "models_srv.tasks.ai_label_batch")["queue"].name == "ai"
    assert router.route({}, "annotation.tasks.run_import_job")["queue"].name == "default"
