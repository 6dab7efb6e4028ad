"""Where the tests find the repository and the read-only fixtures beside it."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("FTPILOT_FIXTURES", REPO.parent / "shared" / "fixtures"))
COMPONENT_SPEC = FIXTURES / "azureml" / "chat_completion_pipeline.spec.yaml"
EVENTS = FIXTURES / "events"
