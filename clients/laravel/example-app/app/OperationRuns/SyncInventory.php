<?php

namespace App\OperationRuns;

use OperationRuns\RunHandle;

/**
 * The executor of `inventory.sync` runs (config/operation-runs.php `executors`), run by
 * `php artisan operation-runs:work`: each device of the run's context, its progress reported as
 * it goes, a cancel honoured between two devices.
 */
class SyncInventory
{
    public function __construct(private Inventory $inventory)
    {
    }

    public function handle(RunHandle $run): ?string
    {
        $devices = $run->context['devices'] ?? [];
        $run->progress(total: count($devices));
        $failed = 0;
        foreach ($devices as $device) {
            if ($run->cancelRequested()) {
                return null; // the run completes `cancelled`
            }
            if ($this->inventory->sync($run->runId, $device)) {
                $run->progress(processed: 1, succeeded: 1);
            } else {
                $failed++;
                $run->fail('device.unreachable', "{$device} did not answer", $device);
                $run->progress(processed: 1, failed: 1);
            }
        }
        return $failed === 0 ? 'succeeded' : 'partially_succeeded';
    }
}
