<?php

declare(strict_types=1);

/*
 * An inventory sync shaped like a Laravel queued job (`handle()` gets its services injected),
 * written only from topology/schemas/ and clients/php/README.md: it dispatches the run
 * (dispatchOrFail), reports progress, completes it, and — run from the command line — receives
 * the run's events.
 *
 *   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \
 *   OPRUN_WORKSPACE_ID=1 OPRUN_TENANT_ID=10 php clients/php/examples/SyncInventoryJob.php
 */

namespace App\Jobs;

require_once __DIR__ . '/../autoload.php';

use OperationRuns\CommandRefused;
use OperationRuns\EventSubscriber;
use OperationRuns\OperationRunService;

final class SyncInventoryJob
{
    public ?int $runId = null;

    /** @param list<string> $devices */
    public function __construct(
        private readonly int $workspaceId,
        private readonly ?int $tenantId,
        private readonly string $selection,
        private readonly array $devices,
    ) {
    }

    public function handle(OperationRunService $runs): void
    {
        $run = $runs->dispatchOrFail('inventory.sync', $this->workspaceId, $this->tenantId, ['selection' => $this->selection], [
            'initiatorName' => 'SyncInventoryJob',
        ]);
        if ($run->deduplicated) {
            return; // Someone else is already syncing this selection.
        }
        $this->runId = $run->runId;
        $runs->updateRun($run->runId, $this->workspaceId, $this->tenantId, ['status' => 'running']);
        $runs->incrementSummaryCounts($run->runId, $this->workspaceId, $this->tenantId, ['total' => count($this->devices)]);
        $failed = 0;
        foreach ($this->devices as $device) {
            if (str_starts_with($device, 'offline-')) {
                $failed++;
                $runs->appendFailures($run->runId, $this->workspaceId, $this->tenantId, [
                    ['code' => 'device.unreachable', 'message' => "{$device} did not answer", 'item' => $device],
                ]);
                $runs->incrementSummaryCounts($run->runId, $this->workspaceId, $this->tenantId, ['processed' => 1, 'failed' => 1]);
                continue;
            }
            $runs->incrementSummaryCounts($run->runId, $this->workspaceId, $this->tenantId, ['processed' => 1, 'succeeded' => 1]);
        }
        $runs->updateRun($run->runId, $this->workspaceId, $this->tenantId, [
            'status' => 'completed',
            'outcome' => $failed === 0 ? 'succeeded' : 'partially_succeeded',
        ]);
    }
}

if (PHP_SAPI === 'cli' && realpath($argv[0] ?? '') === __FILE__) {
    $url = getenv('AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/%2f';
    $namespace = getenv('OPRUN_NAMESPACE') ?: 'operation_runs';
    $tenant = getenv('OPRUN_TENANT_ID');
    // Subscribe before dispatching so that no event of the run is missed.
    $events = new EventSubscriber($url, $namespace);
    $job = new SyncInventoryJob((int) (getenv('OPRUN_WORKSPACE_ID') ?: 1), $tenant === false ? null : (int) $tenant, 'example-' . bin2hex(random_bytes(4)), ['dev-1', 'dev-2', 'offline-3']);
    $service = new OperationRunService($url, $namespace);
    try {
        $job->handle($service);
    } catch (CommandRefused $e) {
        fwrite(STDERR, "refused: {$e->getErrorCode()}\n");
        exit(1);
    }
    $seen = [];
    foreach ($events->events(20.0) as $event) {
        if (($event['data']['run']['id'] ?? null) !== $job->runId) {
            continue;
        }
        $seen[] = $event['type'];
        echo "{$event['type']} #{$event['data']['sequence']} ", json_encode($event['data']['run']['summary_counts']), "\n";
        if ($event['type'] === 'operation_run.completed') {
            echo "outcome: {$event['data']['run']['outcome']}\n";
            break;
        }
    }
    $events->close();
    $service->close();
    exit(end($seen) === 'operation_run.completed' && $seen[0] === 'operation_run.queued' ? 0 : 1);
}
