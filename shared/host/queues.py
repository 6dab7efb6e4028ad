"""Deliver Storage queue messages to a queue-triggered function the way the Functions host does.

Received with a visibility timeout, deleted only after the function returns; a function
that raises leaves the message to reappear, and after ``max_dequeue`` attempts it moves to
``<queue>-poison`` (the host's ``maxDequeueCount``), where the poison function picks it up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import azure.functions as func
from azure.functions.queue import QueueMessage as DeliveredMessage

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

log = logging.getLogger(__name__)

Handler = Callable[[func.QueueMessage], None]


def _as_function_message(message: QueueMessage) -> func.QueueMessage:
    """The same class the Python worker builds for a queue trigger."""
    return DeliveredMessage(
        id=message.id,
        body=message.content,
        dequeue_count=message.dequeue_count,
        pop_receipt=message.pop_receipt,
    )


def deliver(
    queue: QueueClient,
    handler: Handler,
    *,
    poison: QueueClient | None = None,
    max_dequeue: int = 5,
    visibility_timeout: int = 30,
    batch: int = 16,
    workers: int = 4,
) -> int:
    """Deliver the messages visible now, concurrently; return how many were handled (ok or not).

    A message that fails its ``max_dequeue``-th attempt moves to ``poison``; without one
    (the poison queue's own worker) it is deleted and the error logged, so it cannot loop.
    """
    messages = list(
        queue.receive_messages(messages_per_page=batch, max_messages=batch, visibility_timeout=visibility_timeout)
    )
    if not messages:
        return 0

    def one(message: QueueMessage) -> None:
        try:
            handler(_as_function_message(message))
        except Exception:
            log.exception(
                "queue %s: message %s failed (attempt %s)", queue.queue_name, message.id, message.dequeue_count
            )
            if (message.dequeue_count or 0) >= max_dequeue:
                if poison is not None:
                    poison.send_message(message.content)
                queue.delete_message(message)
                log.error(
                    "queue %s: message %s moved to %s",
                    queue.queue_name,
                    message.id,
                    poison.queue_name if poison is not None else "nowhere (no poison queue)",
                )
            return
        queue.delete_message(message)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, messages))
    return len(messages)
