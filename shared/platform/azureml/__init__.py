"""The Azure ML adapter of ``shared.platform.port``; importing it does not import ``azure.ai.ml``."""

from shared.platform.azureml.adapter import AzureMLPlatform

__all__ = ["AzureMLPlatform"]
