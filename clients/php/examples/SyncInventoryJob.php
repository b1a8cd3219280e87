<?php

declare(strict_types=1);

/*
 * An inventory sync dispatched from a Laravel-shaped job (`handle()` gets its services injected),
 * written only from topology/schemas/ and clients/php/README.md: it dispatches the run
 * (dispatchOrFail) and — run from the command line — follows the run's events until it completes.
 * It never executes the run: an executor does (InventoryWorker.php; decision 0087). Dispatching
 * and then executing in-line would race the executor and run the work twice.
 *
 *   php clients/php/examples/InventoryWorker.php &     # the executor
 *   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \
 *   OPRUN_WORKSPACE_ID=1 OPRUN_TENANT_ID=10 php clients/php/examples/SyncInventoryJob.php
 */

namespace App\Jobs;

require_once __DIR__ . '/../autoload.php';

use OperationRuns\CommandRefused;
use OperationRuns\DispatchResult;
use OperationRuns\EventSubscriber;
use OperationRuns\OperationRunService;

final class SyncInventoryJob
{
    /** @param list<string> $devices */
    public function __construct(
        private readonly int $workspaceId,
        private readonly ?int $tenantId,
        private readonly string $selection,
        private readonly array $devices,
    ) {
    }

    /** Dispatches the run (deduplicated while one of the same selection is active). */
    public function handle(OperationRunService $runs): DispatchResult
    {
        return $runs->dispatchOrFail('inventory.sync', $this->workspaceId, $this->tenantId, [
            'selection' => $this->selection,
            'devices' => $this->devices,
        ], ['initiatorName' => 'SyncInventoryJob']);
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
        $run = $job->handle($service);
    } catch (CommandRefused $e) {
        fwrite(STDERR, "refused: {$e->getErrorCode()}\n");
        exit(1);
    }
    echo "dispatched run {$run->runId}\n";
    $seen = [];
    foreach ($events->events(20.0) as $event) {
        if (($event['data']['run']['id'] ?? null) !== $run->runId) {
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
    exit($seen !== [] && end($seen) === 'operation_run.completed' && $seen[0] === 'operation_run.queued' ? 0 : 1);
}
