<?php

namespace App\OperationRuns;

/**
 * The application's inventory (a stand-in): devices "sync" in a tenth of a second, those named
 * `offline-…` fail. Remembers what it synced, for the feature tests.
 */
class Inventory
{
    /** @var array<int, list<string>> run id => devices synced */
    public array $synced = [];

    /** @var (\Closure(int, string): void)|null called after each device (the tests' hook) */
    public ?\Closure $afterSync = null;

    public function sync(int $runId, string $device): bool
    {
        usleep(100_000);
        $this->synced[$runId][] = $device;
        if ($this->afterSync !== null) {
            ($this->afterSync)($runId, $device);
        }
        return !str_starts_with($device, 'offline-');
    }
}
