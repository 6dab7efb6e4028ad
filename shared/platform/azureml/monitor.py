"""How many requests an endpoint served lately, from Azure Monitor's ``RequestsPerMinute`` metric.

Why ``azure-mgmt-monitor`` (``MonitorManagementClient.metrics.list``): azure-monitor-query 2.0
removed ``MetricsQueryClient``; pinning ``azure-monitor-query<2`` keeps a deprecated client alive,
and its successor ``azure-monitor-querymetrics`` queries a regional data-plane endpoint that must
be configured per region. The management client is GA, talks to the ARM endpoint every Azure
client here already reaches, and takes the same credential and RBAC (Monitoring Reader on the
workspace) as the rest of the adapter.

Why ``aggregation="Average"``: Azure Monitor's reference for
``Microsoft.MachineLearningServices/workspaces/onlineEndpoints`` lists Average as the only
aggregation ``RequestsPerMinute`` supports. At a one-minute grain the average of a per-minute
count is that minute's count, so the sum over the window's minutes is the request total. Minutes
without a data point (an idle endpoint emits none) count as zero.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from azure.core.exceptions import ResourceNotFoundError

from shared.platform.port import MINUTE_S, NotFoundError, RequestCounts

if TYPE_CHECKING:
    from azure.mgmt.monitor import MonitorManagementClient

METRIC = "RequestsPerMinute"
GRAIN = "PT1M"  # ISO 8601 for MINUTE_S


def endpoint_resource_id(subscription_id: str, resource_group: str, workspace: str, endpoint: str) -> str:
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}"
    )


def request_counts(
    monitor: MonitorManagementClient, resource_id: str, window_s: float, now: datetime | None = None
) -> RequestCounts:
    """Requests served per minute over the last ``window_s`` seconds (at least one minute: the metric's grain)."""
    end = now or datetime.now(UTC)
    window_s = max(window_s, MINUTE_S)
    start = end - timedelta(seconds=window_s)
    try:
        response = monitor.metrics.list(
            resource_id,
            timespan=f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}",
            interval=GRAIN,
            metricnames=METRIC,
            aggregation="Average",
        )
    except ResourceNotFoundError:
        raise NotFoundError(f"no such endpoint: {resource_id}") from None
    points = (
        point for metric in response.value or () for series in metric.timeseries or () for point in series.data or ()
    )
    per_minute: dict[int, float] = {}
    for point in points:
        minute = int(point.time_stamp.timestamp() // MINUTE_S)
        per_minute[minute] = per_minute.get(minute, 0.0) + (point.average or 0.0)
    return RequestCounts(as_of=end.timestamp(), window_s=window_s, per_minute=per_minute)
