<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.progressed`: counts or failures changed, no status change. */
final class OperationRunProgressed extends OperationRunEvent
{
}
