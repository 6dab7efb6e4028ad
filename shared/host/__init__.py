"""The local host: delivers blob, event, queue and timer triggers to the same functions Azure would."""
