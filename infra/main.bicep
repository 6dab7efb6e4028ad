// azd's entry point: a resource group and, in it, ftpilot.json (the template itself, validated offline by
// tests/test_infra.py against Azure's schemas). This file only maps azd's parameters onto it.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group.')
param environmentName string

@minLength(1)
@description('Region of every resource.')
param location string

@description('Resource group to deploy into (default rg-<environment name>).')
param resourceGroupName string = ''

@description('Azure ML workspace in that resource group: an existing one, or the one to create (createWorkspace).')
param workspaceName string

@description('Create the workspace (it needs keyVaultResourceId); otherwise it must exist.')
param createWorkspace bool = false

@description('Key Vault a new workspace uses.')
param keyVaultResourceId string = ''

@description('GPU compute cluster the fine-tuning jobs run on.')
param computeClusterName string = 'gpu-cluster-big'

@description('Create the compute cluster (0 nodes at rest); otherwise it must exist.')
param createComputeCluster bool = false

@description('VM size of the compute cluster.')
param computeVmSize string = 'Standard_NC24ads_A100_v4'

@description('Uploads are datasets only under this prefix.')
param intakePrefix string = 'incoming/'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: { 'azd-env-name': environmentName }
}

module ftpilot 'ftpilot.json' = {
  name: 'ftpilot'
  scope: rg
  params: {
    location: location
    workspaceName: workspaceName
    createWorkspace: createWorkspace
    keyVaultResourceId: keyVaultResourceId
    computeClusterName: computeClusterName
    createComputeCluster: createComputeCluster
    computeVmSize: computeVmSize
    intakePrefix: intakePrefix
  }
}

// azd keeps these in its environment; the post-deploy hook reads them (infra/postdeploy.py).
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = ftpilot.outputs.AZURE_FUNCTION_APP_NAME
output AZURE_CLIENT_ID string = ftpilot.outputs.AZURE_CLIENT_ID
output FTPILOT_STORAGE_ACCOUNT string = ftpilot.outputs.FTPILOT_STORAGE_ACCOUNT
output FTPILOT_INTAKE_CONTAINER string = ftpilot.outputs.FTPILOT_INTAKE_CONTAINER
output FTPILOT_INTAKE_PREFIX string = ftpilot.outputs.FTPILOT_INTAKE_PREFIX
output FTPILOT_STORAGE_TOPIC string = ftpilot.outputs.FTPILOT_STORAGE_TOPIC
output FTPILOT_WORKSPACE_TOPIC string = ftpilot.outputs.FTPILOT_WORKSPACE_TOPIC
output FTPILOT_WORKSPACE_NAME string = ftpilot.outputs.FTPILOT_WORKSPACE_NAME
output FTPILOT_EVENTS_TOPIC_ENDPOINT string = ftpilot.outputs.FTPILOT_EVENTS_TOPIC_ENDPOINT
