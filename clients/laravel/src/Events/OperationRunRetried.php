<?php

declare(strict_types=1);

namespace OperationRuns\Laravel\Events;

/** `operation_run.retried`: the run was retried (`data.action.new_run_id`). */
final class OperationRunRetried extends OperationRunEvent
{
}
