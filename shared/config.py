"""Every setting ftpilot reads, in one typed place.

Values come from app settings (environment variables in Azure, the ``Values`` of
``local.settings.json`` locally, which the Functions host and ``shared.cli`` both export).
Names are ``FTPILOT_<FIELD>`` upper-cased; ``local.settings.sample.json`` lists them all.
A bad value fails with pydantic's message, which names the setting and what it expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# bool first: JSON true must stay a boolean (the adapter sends "true"), not become 1.
FineTuneValue = bool | str | int | float


# Pay-as-you-go Linux list prices in East US, USD per hour, for the GPU sizes the walkthrough and Azure
# ML's chat-model deployments use (Azure ML adds no surcharge on a managed online endpoint's VMs).
# Written down from Azure's public price list, not re-read by a machine here (no internet): check
# them against the Retail Prices API (README, "What an idle endpoint costs") and override.
DEFAULT_PRICES: dict[str, float] = {
    "Standard_NC6s_v3": 3.06,
    "Standard_NC12s_v3": 6.12,
    "Standard_NC24s_v3": 12.24,
    "Standard_NC24ads_A100_v4": 3.673,
    "Standard_NC48ads_A100_v4": 7.346,
    "Standard_NC96ads_A100_v4": 14.692,
    "Standard_ND96amsr_A100_v4": 32.77,
}
PRICES_READ_ON = "2026-12-02"
LOCAL_STORAGE = "UseDevelopmentStorage=true"


def _identity(name: str, field: str) -> AliasChoices:
    """An identity-based connection setting, named as the Functions host names it (``<connection>__<name>``)."""
    return AliasChoices(f"FTPILOT_STORAGE__{name}", field)


@dataclass(frozen=True)
class StorageAccount:
    """Where ftpilot's storage clients connect: a connection string, or service URLs and an identity."""

    connection_string: str | None = None
    blob_url: str | None = None
    queue_url: str | None = None
    table_url: str | None = None
    client_id: str | None = None  # a user-assigned managed identity; None: DefaultAzureCredential's choice


class Settings(BaseSettings):
    """ftpilot's configuration. Field docs double as the settings reference."""

    model_config = SettingsConfigDict(env_prefix="FTPILOT_", extra="ignore", frozen=True, populate_by_name=True)

    # Storage: where datasets land, reports and splits go, and run records live.
    storage: str | None = Field(
        None,
        description="Storage connection string for datasets, reports, run records and the queues; the blob and "
        "queue triggers' connection has the same name. In Azure leave it unset and set the identity-based "
        "FTPILOT_STORAGE__* settings instead; with neither, the local emulator (UseDevelopmentStorage=true).",
    )
    # Identity-based connection (Functions' "<connection>__<setting>" names; the triggers read the same ones).
    storage_account_name: str | None = Field(
        None,
        validation_alias=_identity("accountName", "storage_account_name"),
        description="Storage account name, for identity-based access (service URLs derived from it).",
    )
    storage_blob_uri: str | None = Field(
        None, validation_alias=_identity("blobServiceUri", "storage_blob_uri"), description="Blob service URL."
    )
    storage_queue_uri: str | None = Field(
        None, validation_alias=_identity("queueServiceUri", "storage_queue_uri"), description="Queue service URL."
    )
    storage_table_uri: str | None = Field(
        None, validation_alias=_identity("tableServiceUri", "storage_table_uri"), description="Table service URL."
    )
    storage_credential: Literal["managedidentity"] | None = Field(
        None,
        validation_alias=_identity("credential", "storage_credential"),
        description="'managedidentity' (what the Functions host expects with a client id).",
    )
    storage_client_id: str | None = Field(
        None,
        validation_alias=_identity("clientId", "storage_client_id"),
        description="Client id of the user-assigned managed identity that reaches storage.",
    )
    intake_container: str = Field("datasets", description="Container watched for uploads.")
    intake_prefix: str = Field("incoming/", description="Uploads are datasets only under this prefix.")
    reports_prefix: str = Field("reports/", description="Validation reports, beside the uploads.")
    prepared_prefix: str = Field("prepared/", description="Train/test splits handed to the platform.")
    runs_table: str = Field("ftpilotruns", description="Table of run records.")
    rollout_queue: str = Field("ftpilot-rollout", description="Queue between the event function and the worker.")

    # Validation and splitting.
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Share of examples held out for the test split.")
    max_seq_length: int = Field(4096, gt=0, description="Examples longer than this many tokens are flagged.")
    tokenizer: str | None = Field(
        None, description="tokenizer.json path or local model folder for exact token counts; estimates when unset."
    )
    min_examples_warning: int = Field(50, ge=10, description="Warn below this many examples (error below 10).")

    # ML platform.
    platform: Literal["azureml", "local"] = Field("local", description="Which adapter runs jobs and endpoints.")
    subscription_id: str | None = Field(None, description="Azure subscription of the workspace (azureml platform).")
    resource_group: str | None = Field(None, description="Resource group of the workspace (azureml platform).")
    workspace_name: str | None = Field(None, description="Azure ML workspace name (azureml platform).")
    registry_name: str = Field("azureml", description="Registry holding the base model and the pipeline component.")
    base_model: str = Field("Phi-3-mini-4k-instruct", description="Foundation model to fine-tune (registry name).")
    compute_cluster: str = Field("gpu-cluster-big", description="Workspace compute cluster for fine-tuning.")
    experiment_name: str = Field("ftpilot-chat-completion", description="Experiment that holds ftpilot's jobs.")
    datastore: str = Field(
        "ftpilot_datasets", description="Azure ML datastore registered on the intake container (prepared splits)."
    )
    finetune_parameters: dict[str, FineTuneValue] = Field(
        default_factory=dict,
        description='JSON object of pipeline inputs applied to every run, e.g. {"num_train_epochs": 1}.',
    )

    # Rollout: job completion to a live endpoint.
    event_topic: str | None = Field(
        None,
        description="Event Grid topic (workspace resource id) whose run events ftpilot acts on; "
        "derived from subscription, resource group and workspace when unset.",
    )
    inference_instance_type: str = Field("Standard_NC6s_v3", description="VM size of each deployment.")
    inference_instance_count: int = Field(1, ge=1, description="Instances per deployment.")
    poll_interval_s: int = Field(60, ge=0, description="Delay before re-checking a long-running operation.")
    deploy_timeout_s: int = Field(5400, gt=0, description="Give up on an endpoint or deployment after this long.")
    smoke_timeout_s: float = Field(90, gt=0, description="Timeout of the smoke-test request.")
    smoke_attempts: int = Field(3, ge=1, description="Smoke-test tries on transient errors before rolling back.")
    max_training_s: int = Field(
        172800, gt=0, description="Cancel a fine-tuning job still running after this long, and fail its run."
    )
    retry_base_s: float = Field(
        5, ge=0, description="First delay after a transient platform error; doubles per error, with jitter."
    )
    retry_cap_s: float = Field(600, ge=0, description="Longest delay between retries of transient platform errors.")

    # Reconciler: what events and messages missed.
    reconcile_schedule: str = Field("0 */5 * * * *", description="NCRONTAB schedule of the reconciler.")
    reconcile_training_s: int = Field(
        900, ge=0, description="Check a training run against the platform when nothing was heard of it this long."
    )
    reconcile_rollout_s: int = Field(
        600, ge=0, description="Re-queue a rollout whose scheduled re-check is this much overdue."
    )
    reconcile_intake_s: int = Field(
        3600, ge=0, description="Run intake again for an upload received this long ago and never submitted."
    )
    reconcile_batch: int = Field(500, ge=1, description="Most runs one reconciler tick looks at.")
    reconcile_concurrency: int = Field(8, ge=1, description="Runs the reconciler checks at once.")

    # The promotion gate: a challenger takes the traffic only if it is not worse than the champion.
    gate_enabled: bool = Field(True, description="Compare a new model with the endpoint's live one before promoting.")
    gate_samples: int = Field(20, ge=1, le=500, description="Held-out test conversations the gate asks both models.")
    gate_tolerance: float = Field(
        0.02, ge=0, le=1, description="How much lower the challenger's mean ROUGE-L F may be than the champion's."
    )
    gate_max_failure_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Largest share of empty or failed answers with which a challenger may replace the live model.",
    )
    gate_max_eval_loss: float | None = Field(
        None, gt=0, description="A model whose job's eval_loss is higher is not promoted (optional, absolute)."
    )
    gate_max_new_tokens: int = Field(128, ge=1, le=4096, description="Tokens per gate answer (greedy decoding).")

    # Lifecycle events: what ftpilot tells the world (``shared.lifecycle``, ``shared.publish``).
    events_queue: str = Field("ftpilot-events", description="Queue that wakes the sender of a run's lifecycle events.")
    events_source: str = Field(
        "/ftpilot", description="CloudEvents source of ftpilot's events (a URI reference naming this deployment)."
    )
    events_topic_endpoint: str | None = Field(
        None,
        description="Event Grid custom topic endpoint (https://<topic>.<region>-1.eventgrid.azure.net/api/events) "
        "that receives the events, as CloudEvents; with the app's managed identity unless a key is set.",
    )
    events_topic_key: str | None = Field(
        None, description="Access key of that topic; leave unset to publish with the managed identity."
    )
    webhook_url: str | None = Field(None, description="URL that receives each event, signed as Standard Webhooks.")
    webhook_secret: str | None = Field(
        None, description="The webhook's signing secret, whsec_ and base64 (required with a webhook URL)."
    )
    events_retry_base_s: float = Field(
        5, ge=0, description="First delay before sending an event again; doubles per failed try."
    )
    events_retry_cap_s: float = Field(3600, ge=0, description="Longest delay between tries of one event.")
    events_ttl_s: int = Field(
        86400, gt=0, description="An event no sink took in this long is dropped (noted on its run), as Event Grid does."
    )

    # Spend limits: admission control before training, and before a new endpoint.
    max_training_runs: int = Field(
        4,
        ge=1,
        le=200,  # the slot holders are one table property (at most 32K characters)
        description="Runs training at once (at most 200); later uploads wait, queued, submitted in upload order.",
    )
    max_training_tokens: int | None = Field(
        None,
        gt=0,
        description="A dataset whose estimated billed training tokens (validation report) exceed this is refused.",
    )
    max_endpoints: int | None = Field(
        None, gt=0, description="Endpoints ftpilot keeps at once; a run that would create one more is refused."
    )

    # Cleanup: idle endpoints ftpilot manages.
    cleanup_schedule: str = Field("0 */15 * * * *", description="NCRONTAB schedule of the idle sweep.")
    idle_window_s: int = Field(86400, gt=0, description="An endpoint that served no request for this long is deleted.")
    cleanup_grace_s: int = Field(3600, ge=0, description="Endpoints younger than this are never deleted.")
    cleanup_dry_run: bool = Field(False, description="Report what the sweep would delete, delete nothing.")
    cleanup_concurrency: int = Field(
        32, ge=1, description="Endpoints checked at once (each check is an Azure Monitor call of ~0.2 s)."
    )
    idle_notice_s: int | None = Field(
        None,
        ge=0,
        description="Announce an idle endpoint's deletion this long before it (an idle_deletion_scheduled event); "
        "the sweep deletes only endpoints announced at least this long ago. Unset: a quarter of the idle window.",
    )
    instance_prices: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per instance hour by VM size, for what deleting an idle deployment saves "
        "(JSON object; defaults: Azure's pay-as-you-go Linux prices, see prices_read_on).",
    )
    prices_read_on: str = Field(PRICES_READ_ON, description="When the instance prices were read.")

    # Local workspace.
    data_dir: Path = Field(Path(".ftpilot"), description="Local workspace state (jobs, MLflow, endpoints).")
    local_base_model: str | None = Field(
        None,
        description="Hugging Face id (already in the local cache) or model folder that local jobs fine-tune; "
        "when unset or not loadable offline, a tiny random model of the requested family stands in.",
    )

    # Local endpoints: what one deployment takes before it refuses.
    endpoint_max_request_bytes: int = Field(
        1_048_576, gt=0, description="Largest request body an endpoint accepts (413 beyond it)."
    )
    endpoint_request_timeout_s: float = Field(
        90, gt=0, description="A request not answered in this long (waiting included) ends with 408."
    )
    endpoint_max_batch: int = Field(8, ge=1, description="Sequences a deployment generates in one batch.")
    endpoint_max_waiting: int = Field(
        32, ge=0, description="Sequences that may wait for a batch; beyond, 429 with Retry-After."
    )

    @field_validator(
        "storage",
        "storage_account_name",
        "storage_blob_uri",
        "storage_queue_uri",
        "storage_table_uri",
        "storage_credential",
        "storage_client_id",
        "subscription_id",
        "resource_group",
        "workspace_name",
        "tokenizer",
        "event_topic",
        "local_base_model",
        "gate_max_eval_loss",
        "events_topic_endpoint",
        "events_topic_key",
        "webhook_url",
        "webhook_secret",
        "max_training_tokens",
        "max_endpoints",
        "idle_notice_s",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        """An app setting left empty (as in local.settings.sample.json) means 'not set'."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Settings that only make sense together; each message names both."""
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("FTPILOT_WEBHOOK_URL is set but FTPILOT_WEBHOOK_SECRET is not: webhooks are always signed")
        if self.webhook_secret:
            from standardwebhooks import Webhook

            try:
                Webhook(self.webhook_secret)
            except Exception as error:
                raise ValueError(f"FTPILOT_WEBHOOK_SECRET is not a whsec_ base64 secret: {error}") from None
        uris = {
            "blobServiceUri": self.storage_blob_uri,
            "queueServiceUri": self.storage_queue_uri,
            "tableServiceUri": self.storage_table_uri,
        }
        missing = [f"FTPILOT_STORAGE__{name}" for name, value in uris.items() if not value]
        if not self.storage and not self.storage_account_name and any(uris.values()) and missing:
            raise ValueError(
                f"identity-based storage needs {', '.join(missing)} too (or FTPILOT_STORAGE__accountName): "
                "ftpilot uses blobs, queues and a table"
            )
        if self.idle_notice_s is not None and self.idle_notice_s >= self.idle_window_s:
            raise ValueError(
                f"FTPILOT_IDLE_NOTICE_S ({self.idle_notice_s}) must be shorter than "
                f"FTPILOT_IDLE_WINDOW_S ({self.idle_window_s}): the notice comes inside the idle window"
            )
        return self

    @field_validator("cleanup_schedule", "reconcile_schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        """Azure Functions timers take six fields, seconds first; a five-field cron line is the usual slip."""
        fields = value.split()
        if len(fields) != 6:
            example = "0 */5 * * * *"
            raise ValueError(
                f"{value!r} has {len(fields)} fields; an NCRONTAB schedule has six, seconds first (e.g. {example!r})"
            )
        return value

    @field_validator("intake_prefix", "reports_prefix", "prepared_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        """Prefixes are compared as strings: normalise to 'a/b/' or ''."""
        value = value.strip("/")
        return f"{value}/" if value else ""

    @property
    def topic(self) -> str:
        """The workspace's Event Grid topic: the setting, or its resource id from the workspace settings."""
        if self.event_topic:
            return self.event_topic
        from shared.run_events import workspace_topic

        return workspace_topic(
            self.subscription_id or "local", self.resource_group or "local", self.workspace_name or "local"
        )

    @property
    def storage_account(self) -> StorageAccount:
        """How to reach storage: the connection string wins, as in the Functions host; then the identity settings."""
        if self.storage:
            return StorageAccount(connection_string=self.storage)
        name = self.storage_account_name
        if not (name or self.storage_blob_uri):
            return StorageAccount(connection_string=LOCAL_STORAGE)

        def url(given: str | None, service: str) -> str:
            return given or f"https://{name}.{service}.core.windows.net/"

        return StorageAccount(
            blob_url=url(self.storage_blob_uri, "blob"),
            queue_url=url(self.storage_queue_uri, "queue"),
            table_url=url(self.storage_table_uri, "table"),
            client_id=self.storage_client_id,
        )

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Each field's app setting name: FTPILOT_<FIELD>, or the Functions-style name an identity setting has."""
        names = {}
        for field, info in cls.model_fields.items():
            alias = info.validation_alias
            names[field] = alias.choices[0] if isinstance(alias, AliasChoices) else f"FTPILOT_{field.upper()}"
        return names

    @property
    def idle_notice(self) -> int:
        """Seconds between the idle sweep's notice and the deletion it announces."""
        return self.idle_window_s // 4 if self.idle_notice_s is None else self.idle_notice_s

    @property
    def epochs(self) -> int:
        """Epochs used for the billed-token estimate (the walkthrough's 3 unless overridden)."""
        return int(self.finetune_parameters.get("num_train_epochs", 3))


def load_local_settings(path: Path = Path("local.settings.json")) -> None:
    """Export ``Values`` from a local.settings.json into the environment, as the Functions host does.

    Existing environment variables win, so a shell export can override the file.
    """
    if not path.is_file():
        return
    values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    for key, value in values.items():
        os.environ.setdefault(key, str(value))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
