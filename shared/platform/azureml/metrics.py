"""The final metrics a fine-tuning job logged, read through the workspace's MLflow REST API.

Azure ML's SDK v2 reads no metrics: its documentation sends you to MLflow against the workspace's
tracking URI. The documented client route is ``mlflow`` plus the ``azureml-mlflow`` plugin, but
that plugin only contributes two things here, turning the ``azureml://`` tracking URI into
``https://`` and attaching an Azure AD token, while the pair would add MLflow and its dependency
tree to the Function App (whose runtime requirements hold neither) for two read calls. So this
reader calls the same MLflow REST API directly (the route Microsoft documents in "Using MLflow
REST with Azure ML"): the ``https://`` form of the tracking URI, ``/api/2.0/mlflow``, and a bearer
token for ``https://management.azure.com`` from the adapter's own credential.

The pipeline's metrics are not on the job's own run: it is a tree (job -> the chat_completion_pipeline
node -> its steps), and the finetune step logs ``train_loss``/``eval_loss``. The reader walks the tree
with MLflow's ``tags.mlflow.parentRunId`` filter and keeps, per metric, the latest value logged
anywhere in it.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from shared.platform.http import HttpStatusError, request_json
from shared.platform.port import NotFoundError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

ARM_SCOPE = "https://management.azure.com/.default"
# job -> pipeline node -> steps, plus headroom; bounds the walk should runs ever point in a cycle.
MAX_DEPTH = 4
PAGE_SIZE = 100
TIMEOUT_S = 30.0


class JobMetricsReader(Protocol):
    """Reads a job's final metrics; the adapter takes any reader, tests pass their own."""

    def final_metrics(self, run_id: str) -> dict[str, float]: ...


class MlflowRestMetricsReader:
    """Final metrics of a run and its descendants from an MLflow tracking server over REST."""

    def __init__(self, tracking_uri: str, credential: TokenCredential, timeout_s: float = TIMEOUT_S) -> None:
        self._api = api_base(tracking_uri)
        self._credential = credential
        self._timeout_s = timeout_s

    def final_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's latest value across the run and its descendants; NotFoundError for an unknown run."""
        token = self._credential.get_token(ARM_SCOPE).token
        try:
            root = self._call(token, "GET", "runs/get?" + urllib.parse.urlencode({"run_id": run_id}))["run"]
        except HttpStatusError as exc:
            if exc.status == 404:
                raise NotFoundError(f"no MLflow run {run_id} in the workspace") from None
            raise
        experiment_id = root["info"]["experiment_id"]
        runs = [root]
        seen = {run_id}
        parents = [run_id]
        for _ in range(MAX_DEPTH):
            children = [run for parent in parents for run in self._children(token, experiment_id, parent)]
            fresh = [run for run in children if run["info"]["run_id"] not in seen]
            seen.update(run["info"]["run_id"] for run in fresh)
            runs.extend(fresh)
            parents = [run["info"]["run_id"] for run in fresh]
            if not parents:
                break
        return latest_metrics(runs)

    def _children(self, token: str, experiment_id: str, parent_id: str) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {
            "experiment_ids": [experiment_id],
            "filter": f"tags.mlflow.parentRunId = '{parent_id}'",
            "max_results": PAGE_SIZE,
        }
        while True:
            page = self._call(token, "POST", "runs/search", body) or {}
            yield from page.get("runs", [])
            if not page.get("next_page_token"):
                return
            body = {**body, "page_token": page["next_page_token"]}

    def _call(self, token: str, method: str, path: str, body: Any = None) -> Any:
        return request_json(
            method,
            f"{self._api}/{path}",
            what=f"MLflow {path.partition('?')[0]}",
            timeout_s=self._timeout_s,
            headers={"Authorization": f"Bearer {token}"},
            body=body,
            secrets=(token,),
        )


def api_base(tracking_uri: str) -> str:
    """``azureml://<region>.api.azureml.ms/mlflow/v1.0/...`` as the https MLflow API root under it."""
    parsed = urllib.parse.urlsplit(tracking_uri)
    scheme = "https" if parsed.scheme == "azureml" else parsed.scheme
    return urllib.parse.urlunsplit((scheme, parsed.netloc, parsed.path.rstrip("/"), "", "")) + "/api/2.0/mlflow"


def latest_metrics(runs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per metric key, the value with the latest (timestamp, step) among ``runs``' MLflow run data."""
    latest: dict[str, tuple[int, int, float]] = {}
    for run in runs:
        for metric in run.get("data", {}).get("metrics", []):
            stamp = (int(metric.get("timestamp", 0)), int(metric.get("step", 0)), float(metric["value"]))
            if metric["key"] not in latest or stamp[:2] >= latest[metric["key"]][:2]:
                latest[metric["key"]] = stamp
    return {key: value for key, (_, _, value) in latest.items()}
