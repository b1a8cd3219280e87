<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Tests\Fixtures;

use OperationRuns\RunHandle;

/** An executor as an application writes one: made by the container, progress, then the outcome. */
final class SyncInventory
{
    public function __construct(private readonly Executions $executions)
    {
    }

    public function handle(RunHandle $run): ?string
    {
        $this->executions->runs[] = $run->runId;
        $run->progress(total: 3);
        $run->progress(processed: 3);
        return null;
    }
}
