<?php

declare(strict_types=1);

/*
 * The executor of `inventory.sync` runs, written only from clients/php/README.md: it executes the
 * jobs the service hands off, with progress, failures and cancellation, and never dispatches
 * (SyncInventoryJob.php dispatches; decision 0087).
 *
 *   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f OPRUN_NAMESPACE=operation_runs \
 *   php clients/php/examples/InventoryWorker.php [MAX_JOBS]
 *
 * Prints `ready` once its job queue is declared (jobs handed off from then on wait for it).
 */

namespace App\Executors;

require_once __DIR__ . '/../autoload.php';

use OperationRuns\RunHandle;
use OperationRuns\Worker;

final class SyncInventory
{
    /** One run: the devices of its context, each reported as it is done. */
    public function __invoke(RunHandle $run): ?string
    {
        $devices = $run->context['devices'] ?? ['dev-1', 'dev-2', 'offline-3'];
        $run->progress(total: count($devices));
        $failed = 0;
        foreach ($devices as $device) {
            if ($run->cancelRequested()) {
                return null; // cancelled: the worker completes the run so
            }
            if (str_starts_with($device, 'offline-')) {
                $failed++;
                $run->fail('device.unreachable', "{$device} did not answer", $device);
                $run->progress(processed: 1, failed: 1);
                continue;
            }
            $run->progress(processed: 1, succeeded: 1);
        }
        return $failed === 0 ? 'succeeded' : 'partially_succeeded';
    }
}

if (PHP_SAPI === 'cli' && realpath($argv[0] ?? '') === __FILE__) {
    $url = getenv('AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/%2f';
    $namespace = getenv('OPRUN_NAMESPACE') ?: 'operation_runs';
    // Every instance of one executor shares its name, and so its job queue: each job runs once.
    $worker = new Worker($url, $namespace, getenv('OPRUN_WORKER_NAME') ?: 'inventory', ['inventory.sync']);
    $worker->declare();
    echo "ready\n";
    $done = $worker->run(new SyncInventory(), isset($argv[1]) ? (int) $argv[1] : null);
    echo "executed {$done} job(s)\n";
    $worker->close();
}
