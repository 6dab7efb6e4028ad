"""Blob trigger: a dataset lands in the intake container.

Event-based (``source=EventGrid``) so uploads are picked up in seconds without container
scans, and bound as an SDK ``BlobClient`` so a gigabyte upload is streamed, never loaded.
"""

import azure.functions as func
from azurefunctions.extensions.bindings import blob

bp = func.Blueprint()


@bp.function_name("intake")
@bp.blob_trigger(
    arg_name="client",
    path="%FTPILOT_INTAKE_CONTAINER%/{name}",
    connection="FTPILOT_STORAGE",
    source=func.BlobSource.EVENT_GRID,
)
def intake(client: blob.BlobClient) -> None:
    from shared.intake import handle_upload
    from shared.services import get_services

    handle_upload(client, get_services())
