"""An in-memory ML platform that behaves like the service where the tests need it.

Azure ML cannot exist here, so the intake and rollout tests run against this fake of the
port: job names are unique (creating one twice is a conflict), jobs move through states
only when the test says so, and configuration errors can be switched on. It is a stand-in
for the service, not for ftpilot's code: the domain logic under test is all real.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from shared.platform.port import (
    ConflictError,
    FineTuneRequest,
    JobInfo,
    JobStatus,
    PlatformConfigError,
)


class FakePlatform:
    def __init__(self) -> None:
        self.jobs: dict[str, JobInfo] = {}
        self.requests: dict[str, FineTuneRequest] = {}
        self.creates = 0
        self.compute_error: str | None = None
        self._lock = threading.Lock()

    def _create_job(self, request: FineTuneRequest) -> JobInfo:
        with self._lock:
            if request.job_name in self.jobs:
                raise ConflictError(f"job {request.job_name} already exists")
            self.creates += 1
            job = JobInfo(
                name=request.job_name,
                status=JobStatus.QUEUED,
                display_name=f"{request.base_model}-{request.dataset_label}",
                tags=dict(request.tags),
                parameters=dict(request.parameters),
            )
            self.jobs[job.name] = job
            self.requests[job.name] = request
            return job

    def submit_finetune(self, request: FineTuneRequest) -> JobInfo:
        if self.compute_error:
            raise PlatformConfigError(self.compute_error)
        existing = self.get_job(request.job_name)
        if existing is not None:
            return existing
        try:
            return self._create_job(request)
        except ConflictError:  # lost a race with another worker: theirs is ours
            return self.jobs[request.job_name]

    def get_job(self, name: str) -> JobInfo | None:
        return self.jobs.get(name)

    def set_job(self, name: str, status: JobStatus, error: str | None = None) -> None:
        self.jobs[name] = replace(self.jobs[name], status=status, error=error)
