<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.queued`: dispatch created the run (status queued). */
final class OperationRunQueued extends OperationRunEvent
{
}
