"""azd's post-deploy step: subscribe the deployed functions to the two system topics.

Neither subscription can be part of the template. The blob trigger's webhook URL carries the
blob extension's system key, which exists only once the code is deployed and the host has
started; Event Grid checks that an Azure Function destination exists when the subscription is
created. So after ``azd deploy`` (or a plain publish) this step, run again as often as you like:

* reads the app's host name and its ``blobs_extension`` system key (``azure-mgmt-web``), and
  checks that the functions it points Event Grid at are deployed;
* creates or updates, with one PUT each (``azure-mgmt-eventgrid``), the subscription of the
  storage topic to the ``intake`` webhook (``BlobCreated``, subject beginning with the intake
  prefix) and of the workspace topic to ``run_events`` (``RunCompleted`` and
  ``RunStatusChanged`` of pipeline runs only: child steps emit run events too).

It reads azd's environment (the template's outputs). The key goes into the subscription and
nowhere else: it is never printed. Run it by hand with ``python -m infra.postdeploy``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# What ftpilot's functions and events are called (function_app.py, shared/run_events.py); a test checks both.
INTAKE_FUNCTION = "intake"
RUN_EVENTS_FUNCTION = "run_events"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
RUN_EVENT_TYPES = (
    "Microsoft.MachineLearningServices.RunCompleted",
    "Microsoft.MachineLearningServices.RunStatusChanged",
)
PIPELINE_RUN = "azureml.PipelineRun"
INTAKE_SUBSCRIPTION = "ftpilot-intake"
RUN_EVENTS_SUBSCRIPTION = "ftpilot-run-events"
REQUIRED = (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_APP_NAME",
    "FTPILOT_STORAGE_TOPIC",
    "FTPILOT_WORKSPACE_TOPIC",
    "FTPILOT_INTAKE_CONTAINER",
    "FTPILOT_INTAKE_PREFIX",
)
KEY_WAIT_S = (5, 10, 20, 40, 60)  # the host writes its system keys when it first starts after a deploy


class HookError(RuntimeError):
    """Something the user must fix, said in one line."""


@dataclass(frozen=True)
class Target:
    subscription_id: str
    resource_group: str
    app: str
    storage_topic: str
    workspace_topic: str
    container: str
    prefix: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Target:
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise HookError(
                f"not set: {', '.join(missing)} (azd sets them from the template's outputs; "
                "run `azd provision` first, or export them to run this by hand)"
            )
        return cls(*(env[name] for name in REQUIRED))

    @property
    def subject_prefix(self) -> str:
        """What Event Grid compares a BlobCreated subject with: the container, then the intake prefix."""
        return f"/blobServices/default/containers/{self.container}/blobs/{self.prefix.lstrip('/')}"


def intake_subscription(target: Target, host: str, key: str) -> Any:
    """The storage topic's subscription: new blobs under the prefix, to the blob extension's webhook."""
    from azure.mgmt.eventgrid import models

    return models.EventSubscription(
        destination=models.WebHookEventSubscriptionDestination(
            endpoint_url=f"https://{host}/runtime/webhooks/blobs?functionName=Host.Functions.{INTAKE_FUNCTION}&code={key}",
            max_events_per_batch=1,
        ),
        filter=models.EventSubscriptionFilter(
            included_event_types=[BLOB_CREATED], subject_begins_with=target.subject_prefix
        ),
        event_delivery_schema="EventGridSchema",
        retry_policy=models.RetryPolicy(max_delivery_attempts=30, event_time_to_live_in_minutes=1440),
    )


def run_events_subscription(site_id: str) -> Any:
    """The workspace topic's subscription: pipeline runs' completion and status changes, to ``run_events``."""
    from azure.mgmt.eventgrid import models

    return models.EventSubscription(
        destination=models.AzureFunctionEventSubscriptionDestination(
            resource_id=f"{site_id}/functions/{RUN_EVENTS_FUNCTION}", max_events_per_batch=1
        ),
        filter=models.EventSubscriptionFilter(
            included_event_types=list(RUN_EVENT_TYPES),
            advanced_filters=[models.StringInAdvancedFilter(key="data.runType", values=[PIPELINE_RUN])],
        ),
        event_delivery_schema="EventGridSchema",
        retry_policy=models.RetryPolicy(max_delivery_attempts=30, event_time_to_live_in_minutes=1440),
    )


def _blobs_key(web: Any, target: Target, sleep: Callable[[float], None]) -> str:
    for wait in (*KEY_WAIT_S, None):
        key = (web.web_apps.list_host_keys(target.resource_group, target.app).system_keys or {}).get("blobs_extension")
        if key:
            return key
        if wait is None:
            break
        sleep(wait)
    raise HookError(
        f"{target.app} has no blobs_extension system key yet: the host writes it when it starts with the "
        f"{INTAKE_FUNCTION!r} blob trigger deployed. Open the app once (or wait a minute) and run this again."
    )


def _deployed(web: Any, target: Target) -> set[str]:
    return {
        function.name.rsplit("/", 1)[-1] for function in web.web_apps.list_functions(target.resource_group, target.app)
    }


def run(
    env: Mapping[str, str],
    credential: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
    **client_options: Any,
) -> None:
    """Create or update both subscriptions; ``client_options`` go to both clients (a transport, in the tests)."""
    from azure.mgmt.eventgrid import EventGridManagementClient
    from azure.mgmt.web import WebSiteManagementClient

    target = Target.from_env(env)
    if credential is None:
        from azure.identity import DefaultAzureCredential  # azd's login, the Azure CLI's, or a managed identity

        credential = DefaultAzureCredential()
    web = WebSiteManagementClient(credential, target.subscription_id, **client_options)
    grid = EventGridManagementClient(credential, target.subscription_id, **client_options)

    site = web.web_apps.get(target.resource_group, target.app)
    missing = {INTAKE_FUNCTION, RUN_EVENTS_FUNCTION} - _deployed(web, target)
    if missing:
        raise HookError(f"{target.app} does not have {', '.join(sorted(missing))} deployed: run `azd deploy` first")
    key = _blobs_key(web, target, sleep)

    subscriptions = grid.system_topic_event_subscriptions
    subscriptions.begin_create_or_update(
        target.resource_group,
        target.storage_topic,
        INTAKE_SUBSCRIPTION,
        intake_subscription(target, site.default_host_name, key),
    ).result()
    say(
        f"{target.storage_topic}/{INTAKE_SUBSCRIPTION}: {BLOB_CREATED} under {target.subject_prefix} "
        f"-> https://{site.default_host_name}/runtime/webhooks/blobs ({INTAKE_FUNCTION})"
    )
    subscriptions.begin_create_or_update(
        target.resource_group, target.workspace_topic, RUN_EVENTS_SUBSCRIPTION, run_events_subscription(site.id)
    ).result()
    kinds = ", ".join(kind.rsplit(".", 1)[-1] for kind in RUN_EVENT_TYPES)
    say(f"{target.workspace_topic}/{RUN_EVENTS_SUBSCRIPTION}: {kinds} of {PIPELINE_RUN} -> {RUN_EVENTS_FUNCTION}")


def main() -> int:
    from azure.core.exceptions import HttpResponseError

    try:
        run(os.environ)
    except HookError as error:
        print(f"post-deploy: {error}", file=sys.stderr)
        return 1
    except HttpResponseError as error:
        reason = error.error.code if error.error else error.reason
        print(f"post-deploy: Azure refused ({error.status_code} {reason}): {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
