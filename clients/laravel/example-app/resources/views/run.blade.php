<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Inventory sync #{{ $runId }}</title></head>
<body>
<h1>Inventory sync</h1>
<x-operation-runs::progress :run="$runId" :workspace="$workspaceId" :tenant="$tenantId" />
</body>
</html>
